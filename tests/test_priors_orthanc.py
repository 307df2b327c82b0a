"""Priors end to end, embedded mode, real peers only: a study arrives at our C-STORE SCP, the relay
(in a real ``python -m worker`` process) completes it and writes the ``clinic.fetch_priors`` outbox
row, the worker C-FINDs Orthanc and C-MOVEs the patient's older studies of the same modality to our
SCP, and the radiologist's study API lists them, linked, while the worklist does not.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import select

from clinic.ai.models import AnalysisJob
from clinic.auth.models import Role
from clinic.db import unit_of_work
from clinic.imaging.models import PriorStatus, ReceiveStatus, Study, StudyPrior
from clinic.imaging.priors import FETCH_PRIORS_TASK
from clinic.network.service import AEIn, add_ae
from clinic.outbox.models import OutboxMessage
from clinic.web.app import create_app
from integrations.dicom.scp import start_scp
from integrations.dicom.scu import send_files
from integrations.dicom.synthetic import build_cxr_dataset, write_dataset
from tests.clinic.helpers import add_user, bearer, token_for
from tests.peers.orthanc import Orthanc
from tests.worker.conftest import make_stack, wait_for

TODAY = dt.date.today()


def _radiograph(folder: Path, patient: str, day: dt.date, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 4000, (64, 64), dtype=np.uint16)
    ds = build_cxr_dataset(
        pixels,
        patient_id=patient,
        patient_name=f"TEST^{patient}",
        accession_number=f"A{seed}",
        study_datetime=dt.datetime.combine(day, dt.time(8, 0)),
        study_description=f"XR CHEST {day.isoformat()}",
    )
    return write_dataset(ds, folder / f"{patient}-{seed}.dcm")


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_priors_reach_the_radiologist_through_relay_and_worker(
    request: pytest.FixtureRequest, tmp_path: Path, orthanc_factory: Callable[..., Orthanc]
) -> None:
    patient = f"P{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "in"
    folder.mkdir()
    older = [_radiograph(folder, patient, TODAY - dt.timedelta(days=d), seed=d) for d in (400, 800)]
    unrelated = _radiograph(folder, patient + "X", TODAY - dt.timedelta(days=100), seed=1)
    pacs = orthanc_factory("PACS")
    for path in [*older, unrelated]:
        pacs.upload(path)

    stack = make_stack(request, tmp_path, "embedded", tmp_path / "models", dicom_ae="CLINIC")
    scp = start_scp(stack.settings, stack.session_factory, port=0)
    try:
        pacs.add_modality("clinic", "CLINIC", "127.0.0.1", scp.port)  # the PACS must know our AE
        with unit_of_work(stack.session_factory) as session:
            add_ae(
                session,
                AEIn(ae_title="PACS", host="127.0.0.1", port=pacs.dicom_port, query_priors=True),
            )
        # Only the ingest queue: the analysis job of the current study waits, unconsumed.
        worker = stack.start_worker("-Q", "ingest")
        current = _radiograph(folder, patient, TODAY, seed=7)
        assert send_files("127.0.0.1", scp.port, "CLINIC", [current])[0].ok

        prior_uids = [_uid(p) for p in older]  # newest first

        def fetched() -> bool:
            worker.alive_or_fail()
            with unit_of_work(stack.session_factory) as session:
                rows = session.scalars(select(StudyPrior)).all()
                studies = session.scalars(select(Study).where(Study.study_uid.in_(prior_uids))).all()
                return (
                    len(rows) == 2
                    and all(r.status == PriorStatus.FETCHED for r in rows)
                    and len(studies) == 2
                    and all(s.status == ReceiveStatus.COMPLETE for s in studies)
                )

        wait_for(fetched, timeout=40, what=f"priors fetched and complete (log: {worker.log_path})")
        # One more relay pass after the priors completed: still no analysis asked for them.
        wait_for(lambda: "prior, not analysed" in worker.log(), timeout=10, what="relay to pass the priors")
        worker.terminate()
    finally:
        scp.shutdown()

    with unit_of_work(stack.session_factory) as session:
        current_study = session.scalars(select(Study).where(Study.study_uid == _uid(current))).one()
        priors = session.scalars(select(Study).where(Study.study_uid.in_(prior_uids))).all()
        assert all(p.is_prior and p.patient_id == current_study.patient_id for p in priors)
        assert session.scalar(select(Study.id).where(Study.study_uid == _uid(unrelated))) is None
        assert [j.study_id for j in session.scalars(select(AnalysisJob))] == [current_study.id]
        fetches = session.scalars(select(OutboxMessage).where(OutboxMessage.task == FETCH_PRIORS_TASK)).all()
        assert [m.kwargs for m in fetches] == [{"study_id": current_study.id}]
        prior_ids = {p.study_uid: p.id for p in priors}

    add_user(stack.session_factory, "rad", Role.RADIOLOGIST)
    with TestClient(create_app(stack.settings, stack.session_factory)) as client:
        headers = bearer(token_for(client, "rad"))
        body = client.get(f"/api/radiology/studies/{current_study.id}", headers=headers).json()
        assert body["is_prior"] is False
        listed = [(p["prior_study_uid"], p["status"], p["modality"], p["url"]) for p in body["priors"]]
        assert listed == [
            (uid, "fetched", "DX", f"/radiology/studies/{prior_ids[uid]}") for uid in prior_uids
        ]
        assert body["priors"][0]["study_date"] == (TODAY - dt.timedelta(days=400)).isoformat()
        page = client.get(f"/radiology/studies/{current_study.id}", headers=headers).text
        assert "Priors" in page and f"/radiology/studies/{prior_ids[prior_uids[0]]}" in page
        prior_body = client.get(f"/api/radiology/studies/{prior_ids[prior_uids[0]]}", headers=headers).json()
        assert prior_body["is_prior"] is True and prior_body["series"][0]["instances"]
        rows = client.get("/api/radiology/worklist", headers=headers).json()["rows"]
        assert [r["study_id"] for r in rows] == [current_study.id]
