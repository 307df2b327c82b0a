"""The AI-prioritised worklist, the study view and the images, through the real app and services,
on SQLite and PostgreSQL; every read of patient data leaves an audit row."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import SYNTHETIC_DISCLAIMER
from clinic.ai.service import request_analysis
from clinic.audit.models import AuditEvent
from clinic.auth.models import Role
from clinic.db import unit_of_work, utcnow
from clinic.imaging.models import Instance, Study
from clinic.radiology.priority import AIUrgency, Priority, decide_priority
from clinic.radiology.service import StudyState, worklist
from clinic.settings import Settings
from tests.clinic.helpers import (
    HEATMAP_SIZE,
    MODEL_NAME,
    MODEL_VERSION,
    StoredStudy,
    add_read,
    add_user,
    bearer,
    png,
    store_cxr,
    token_for,
)

CONSOLIDATION = ("consolidation", "Consolidation", 0.91, 0.5, int(Priority.URGENT))
NO_CONSOLIDATION = ("consolidation", "Consolidation", 0.08, 0.5, int(Priority.URGENT))
NO_NODULE = ("nodule_mass", "Nodule/mass", 0.12, 0.4, int(Priority.URGENT))
T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


# --- the rule, as a pure function -------------------------------------------------------------


def test_priority_is_the_max_of_order_and_ai_and_the_wait_caps_it() -> None:
    def decide(order: int, ai: list[int], waited_min: float) -> tuple[Priority, str]:
        d = decide_priority(
            order_priority=order,
            ai_urgencies=[AIUrgency(f"f{i}", u) for i, u in enumerate(ai)],
            received_at=T0,
            now=T0 + dt.timedelta(minutes=waited_min),
            max_wait_minutes=120,
        )
        return d.priority, d.reason

    assert decide(0, [], 5) == (Priority.ROUTINE, "routine")
    assert decide(0, [1], 5) == (Priority.URGENT, "AI: f0")
    assert decide(2, [1], 5) == (Priority.STAT, "order STAT")
    assert decide(1, [1], 5) == (Priority.URGENT, "order URGENT; AI: f0")
    assert decide(1, [0], 5) == (Priority.URGENT, "order URGENT")  # a negative AI never lowers the order
    assert decide(0, [2, 1], 5) == (Priority.STAT, "AI: f0")
    assert decide(0, [], 119.9) == (Priority.ROUTINE, "routine")
    assert decide(0, [], 120) == (Priority.STAT, "waited > 120 min")
    assert decide(0, [1], 500) == (Priority.STAT, "waited > 120 min")
    assert decide(7, [-3], 1)[0] == Priority.STAT  # stored values out of range are pinned


# --- the worklist service ------------------------------------------------------------------------


def four_studies(settings: Settings, factory: sessionmaker[Session]) -> dict[str, StoredStudy]:
    """Negative (arrived 10 min before T0), positive (5 min), order STAT (1 min), old negative (119 min)."""
    studies = {
        "negative": store_cxr(settings, factory, patient="NEG", received_at=T0 - dt.timedelta(minutes=10)),
        "positive": store_cxr(settings, factory, patient="POS", received_at=T0 - dt.timedelta(minutes=5)),
        "stat": store_cxr(
            settings, factory, patient="STA", received_at=T0 - dt.timedelta(minutes=1), order_priority=2
        ),
        "old": store_cxr(settings, factory, patient="OLD", received_at=T0 - dt.timedelta(minutes=119)),
    }
    add_read(settings, factory, studies["negative"], [NO_CONSOLIDATION, NO_NODULE])
    add_read(settings, factory, studies["positive"], [CONSOLIDATION, NO_NODULE])
    add_read(settings, factory, studies["old"], [NO_CONSOLIDATION, NO_NODULE])
    return studies


def test_worklist_order_and_reasons(web_settings: Settings, session_factory: sessionmaker[Session]) -> None:
    s = four_studies(web_settings, session_factory)
    names = {v.study_id: k for k, v in s.items()}
    with unit_of_work(session_factory) as session:
        rows = worklist(session, web_settings, now=T0)
        later = worklist(session, web_settings, now=T0 + dt.timedelta(minutes=2))
    # At T0 the old study has waited 119 min: still routine, but ahead of the newer negative one.
    assert [names[r.study_id] for r in rows] == ["stat", "positive", "old", "negative"]
    assert [r.priority for r in rows] == [Priority.STAT, Priority.URGENT, Priority.ROUTINE, Priority.ROUTINE]
    assert [r.priority_reason for r in rows] == ["order STAT", "AI: Consolidation", "routine", "routine"]
    # Two minutes later it has waited 121 min and goes to the very top (it arrived first).
    assert [names[r.study_id] for r in later] == ["old", "stat", "positive", "negative"]
    assert later[0].priority_reason == "waited > 120 min"
    assert round(later[0].waiting_minutes) == 121

    positive = rows[1]
    assert positive.ai_positive and positive.status == StudyState.AI_READ
    assert (positive.patient_identifier, positive.modality, positive.body_part) == ("POS", "CR", "CHEST")
    consolidation = positive.findings[0]
    assert (consolidation.model_name, consolidation.model_version) == (MODEL_NAME, MODEL_VERSION)
    assert consolidation.positive and consolidation.disclaimer == SYNTHETIC_DISCLAIMER
    assert not rows[3].ai_positive  # AI-negative studies stay on the list


def test_worklist_status(web_settings: Settings, session_factory: sessionmaker[Session]) -> None:
    receiving = store_cxr(web_settings, session_factory, patient="R")
    analysing = store_cxr(web_settings, session_factory, patient="A")
    read = store_cxr(web_settings, session_factory, patient="D")
    add_read(web_settings, session_factory, read, [NO_CONSOLIDATION], heatmaps=False)
    with unit_of_work(session_factory) as session:
        study = session.get(Study, analysing.study_id)
        assert study is not None
        request_analysis(session, study, "inference.cpu")
    with unit_of_work(session_factory) as session:
        status = {r.study_id: r.status for r in worklist(session, web_settings)}
    assert status == {
        receiving.study_id: StudyState.RECEIVING,
        analysing.study_id: StudyState.ANALYSING,
        read.study_id: StudyState.AI_READ,
    }


# --- through the app ---------------------------------------------------------------------------


def reads(factory: sessionmaker[Session], resource_type: str) -> list[AuditEvent]:
    with unit_of_work(factory) as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "read", AuditEvent.resource_type == resource_type)
                .order_by(AuditEvent.id)
            )
        )


@pytest.fixture
def radiologist(client: TestClient, session_factory: sessionmaker[Session]) -> dict[str, str]:
    add_user(session_factory, "dr.kim", Role.RADIOLOGIST)
    return bearer(token_for(client, "dr.kim"))


def test_worklist_api_is_ordered_shows_the_model_and_is_audited(
    client: TestClient,
    web_settings: Settings,
    session_factory: sessionmaker[Session],
    radiologist: dict[str, str],
) -> None:
    now = utcnow()
    s = {
        "negative": store_cxr(
            web_settings, session_factory, patient="NEG", received_at=now - dt.timedelta(minutes=20)
        ),
        "positive": store_cxr(
            web_settings, session_factory, patient="POS", received_at=now - dt.timedelta(minutes=5)
        ),
        "old": store_cxr(
            web_settings, session_factory, patient="OLD", received_at=now - dt.timedelta(minutes=180)
        ),
        "stat": store_cxr(web_settings, session_factory, patient="STA", received_at=now, order_priority=2),
    }
    add_read(web_settings, session_factory, s["negative"], [NO_CONSOLIDATION])
    add_read(web_settings, session_factory, s["positive"], [CONSOLIDATION])
    add_read(web_settings, session_factory, s["old"], [NO_CONSOLIDATION])

    response = client.get("/api/radiology/worklist", headers=radiologist)
    assert response.status_code == 200
    rows = response.json()["rows"]
    assert [r["patient_identifier"] for r in rows] == ["OLD", "STA", "POS", "NEG"]
    assert [r["priority"] for r in rows] == ["STAT", "STAT", "URGENT", "ROUTINE"]
    assert rows[0]["priority_reason"] == "waited > 120 min"
    finding = rows[2]["findings"][0]
    assert (finding["model_name"], finding["model_version"]) == (MODEL_NAME, MODEL_VERSION)
    assert finding["positive"] and finding["disclaimer"] == SYNTHETIC_DISCLAIMER
    assert finding["heatmap_url"] == f"/api/ai/findings/{finding['id']}/heatmap"
    assert response.headers["cache-control"] == "no-store"

    page = client.get("/radiology", headers=radiologist)
    assert page.status_code == 200
    for text in (
        MODEL_NAME,
        f"v{MODEL_VERSION}",
        SYNTHETIC_DISCLAIMER,
        "waited &gt; 120 min",
        "Consolidation",
    ):
        assert text in page.text

    events = reads(session_factory, "worklist")
    assert len(events) == 2  # the API call and the page
    assert all((e.username, e.role, e.client) == ("dr.kim", "radiologist", "testclient") for e in events)
    assert events[0].detail.endswith(
        "studies=" + ",".join(str(s[k].study_id) for k in ("old", "stat", "positive", "negative"))
    )


def test_study_detail_image_and_heatmap(
    client: TestClient,
    web_settings: Settings,
    session_factory: sessionmaker[Session],
    radiologist: dict[str, str],
) -> None:
    stored = store_cxr(web_settings, session_factory, patient="P77", name="HONG^GILDONG")
    consolidation_id, nodule_id = add_read(web_settings, session_factory, stored, [CONSOLIDATION, NO_NODULE])

    detail = client.get(f"/api/radiology/studies/{stored.study_id}", headers=radiologist)
    assert detail.status_code == 200
    body = detail.json()
    assert body["study"]["patient_name"] == "HONG^GILDONG" and body["study"]["priority"] == "URGENT"
    assert body["display_instance_id"] == stored.instance_id
    instance = body["series"][0]["instances"][0]
    assert (instance["rows"], instance["columns"]) == (1955, 1841)
    (read,) = body["reads"]
    assert (read["model_name"], read["model_version"], read["is_synthetic"]) == (
        MODEL_NAME,
        MODEL_VERSION,
        True,
    )
    assert [f["id"] for f in read["findings"]] == [consolidation_id, nodule_id]

    rendered = client.get(instance["rendered_url"], headers=radiologist)
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    assert rendered.headers["cache-control"] == "no-store"
    image = png(rendered.content)
    assert image.size == (round(1841 * 1024 / 1955), 1024) and image.mode == "L"
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.std() > 20 and 20 < pixels.mean() < 235  # a radiograph, not a blank frame

    small = client.get(
        instance["rendered_url"], params={"max_size": 256, "format": "jpeg"}, headers=radiologist
    )
    assert small.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(small.content)).size == (round(1841 * 256 / 1955), 256)
    narrow = client.get(
        instance["rendered_url"],
        params={"max_size": 256, "window_center": 12000, "window_width": 4000},
        headers=radiologist,
    )
    default = client.get(instance["rendered_url"], params={"max_size": 256}, headers=radiologist)
    assert np.asarray(png(narrow.content), float).std() > np.asarray(png(default.content), float).std()
    half = client.get(instance["rendered_url"], params={"window_center": 1}, headers=radiologist)
    assert half.status_code == 422

    heatmap = client.get(read["findings"][0]["heatmap_url"], headers=radiologist)
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    overlay = np.asarray(png(heatmap.content))
    assert overlay.shape == (HEATMAP_SIZE, HEATMAP_SIZE, 4)
    alpha = overlay[..., 3]
    peak_y, peak_x = int(0.6 * HEATMAP_SIZE), int(0.35 * HEATMAP_SIZE)
    assert alpha[peak_y, peak_x] > 240 and alpha[0, -1] < 5  # opaque at the blob, clear far from it

    for kind, resource in (("study", stored.study_id), ("instance-image", stored.instance_id)):
        events = reads(session_factory, kind)
        assert events and {e.resource_id for e in events} == {str(resource)}
        assert all(e.patient_id == stored.patient_id and e.username == "dr.kim" for e in events)
    assert len(reads(session_factory, "instance-image")) == 4  # 1024 PNG, JPEG, narrow, default; not the 422
    (heat_event,) = reads(session_factory, "heatmap")
    assert (heat_event.resource_id, heat_event.patient_id) == (str(consolidation_id), stored.patient_id)

    page = client.get(f"/radiology/studies/{stored.study_id}", headers=radiologist)
    assert page.status_code == 200
    for text in (
        MODEL_NAME,
        f"version {MODEL_VERSION}",
        SYNTHETIC_DISCLAIMER,
        'id="overlay-toggle"',
        "HONG, GILDONG",  # the PN shown for people, not as stored (HONG^GILDONG)
    ):
        assert text in page.text
    assert "HONG^GILDONG" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_missing_images_are_clear_404s(
    client: TestClient,
    web_settings: Settings,
    session_factory: sessionmaker[Session],
    radiologist: dict[str, str],
) -> None:
    stored = store_cxr(web_settings, session_factory, patient="P1")
    (no_map,) = add_read(web_settings, session_factory, stored, [NO_CONSOLIDATION], heatmaps=False)
    response = client.get(f"/api/ai/findings/{no_map}/heatmap", headers=radiologist)
    assert (response.status_code, response.json()["detail"]) == (404, "this finding has no heatmap")
    response = client.get("/api/ai/findings/999999/heatmap", headers=radiologist)
    assert (response.status_code, response.json()["detail"]) == (404, "no such finding")
    response = client.get("/api/imaging/instances/999999/rendered", headers=radiologist)
    assert (response.status_code, response.json()["detail"]) == (404, "no such instance")

    stored.path.unlink()
    response = client.get(f"/api/imaging/instances/{stored.instance_id}/rendered", headers=radiologist)
    assert (response.status_code, response.json()["detail"]) == (404, "stored file is missing")
    with unit_of_work(session_factory) as session:
        instance = session.get(Instance, stored.instance_id)
        assert instance is not None
        instance.file_path = "../../../../etc/passwd"  # never outside the data dir
    response = client.get(f"/api/imaging/instances/{stored.instance_id}/rendered", headers=radiologist)
    assert (response.status_code, response.json()["detail"]) == (404, "file not found")
    assert reads(session_factory, "instance-image") == [] and reads(session_factory, "heatmap") == []


def test_the_stored_file_is_the_one_rendered(
    client: TestClient,
    web_settings: Settings,
    session_factory: sessionmaker[Session],
    radiologist: dict[str, str],
) -> None:
    """A second study whose file is a photometric negative renders as the negative of the first."""
    first = store_cxr(web_settings, session_factory, patient="P1")
    second = store_cxr(web_settings, session_factory, patient="P2")
    ds = dcmread(second.path)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(second.path)
    params = {"max_size": 128, "window_center": 14000, "window_width": 12000}
    a = np.asarray(
        png(
            client.get(
                f"/api/imaging/instances/{first.instance_id}/rendered", params=params, headers=radiologist
            ).content
        ),
        dtype=int,
    )
    b = np.asarray(
        png(
            client.get(
                f"/api/imaging/instances/{second.instance_id}/rendered", params=params, headers=radiologist
            ).content
        ),
        dtype=int,
    )
    assert np.array_equal(a + b, np.full_like(a, 255))


def test_study_page_shows_an_image_not_our_own_sr_series(
    client: TestClient,
    web_settings: Settings,
    session_factory: sessionmaker[Session],
    radiologist: dict[str, str],
) -> None:
    """An AI result SR recorded in the study (series number 0, before the image) is no image to show."""
    from clinic.imaging.service import InstanceMeta, record_instance
    from clinic.patients.service import PatientDemographics

    stored = store_cxr(web_settings, session_factory, patient="P78")
    with unit_of_work(session_factory) as session:
        study = session.get(Study, stored.study_id)
        assert study is not None
        sr = record_instance(
            session,
            InstanceMeta(
                patient=PatientDemographics(identifier="P78"),
                study_uid=study.study_uid,
                series_uid="1.2.826.0.1.3680043.8.498.1",
                sop_instance_uid="1.2.826.0.1.3680043.8.498.2",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                file_path="dicom/sr.dcm",
                file_size=1,
                modality="SR",
                series_number=0,
                instance_number=1,
            ),
        )
    body = client.get(f"/api/radiology/studies/{stored.study_id}", headers=radiologist).json()
    assert [s["modality"] for s in body["series"]][0] == "SR"  # listed first ...
    assert body["display_instance_id"] == stored.instance_id != sr.instance_id  # ... but not shown
