"""AI result objects built, stored and delivered: the tasks' functions in-process, against a real
database (SQLite and PostgreSQL) and a real DICOM peer (a pynetdicom Storage SCP on loopback that
answers the status a test chooses). The whole path with Orthanc and ``clinic up`` is in
tests/test_pacs_roundtrip.py.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import SYNTHETIC_DISCLAIMER, AIRead
from clinic.ai.service import FindingIn, ReadIn, record_read
from clinic.db import unit_of_work, utcnow
from clinic.imaging.models import Instance, ReceiveStatus, Series, Study
from clinic.imaging.service import InstanceMeta, complete_quiet_series, record_instance
from clinic.network.service import AEIn, add_ae, get_ae, update_ae, with_changes
from clinic.outbox.models import OutboxMessage
from clinic.patients.service import PatientDemographics
from clinic.results.models import Delivery, DeliveryStatus, ResultKind, ResultObject
from clinic.results.service import (
    ATTEMPT_LEASE,
    BUILD_RESULTS_TASK,
    DELIVER_RESULT_TASK,
    claim_delivery,
    list_build_failures,
    list_deliveries,
    replay_study,
    requeue_due_deliveries,
)
from clinic.settings import Environment, Settings
from integrations.dicom.synthetic import build_cxr_dataset
from tests.clinic.helpers import MODEL_NAME
from tests.conftest import free_port
from worker.results_tasks import build_results, deliver_result
from worker.tasks import WorkerContext

LEASE = dt.timedelta(seconds=900)
#: Most tests run on SQLite only; those where row locks matter run on PostgreSQL too.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class Peer:
    """A Storage SCP on loopback: keeps what it receives and answers ``status``."""

    def __init__(self, ae_title: str = "PACS", require_calling: list[str] | None = None) -> None:
        self.ae = AE(ae_title=ae_title)
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.ae.add_supported_context(Comprehensive3DSRStorage)
        self.ae.add_supported_context(SegmentationStorage)
        if require_calling:
            self.ae.require_calling_aet = require_calling
        self.status = 0x0000
        self.received: list[Dataset] = []
        self.calling: list[str] = []
        self._lock = threading.Lock()
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert self.server is not None
        self.port = int(self.server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
            self.calling.append(str(event.assoc.requestor.ae_title).strip())
        return self.status

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer()
    yield server
    server.stop()


@pytest.fixture
def context(db_url: str, data_dir: Path) -> WorkerContext:
    settings = Settings(
        data_dir=data_dir,
        database_url=db_url,
        environment=Environment.TEST,
        dicom_ae="CLINIC",
        delivery_backoff_seconds=0.2,
        delivery_backoff_cap_seconds=1.0,
    )
    settings.ensure_dirs()
    return WorkerContext(settings)


def add_destination(factory: sessionmaker[Session], title: str, port: int, results: bool = True) -> None:
    with unit_of_work(factory) as session:
        add_ae(session, AEIn(title, "127.0.0.1", port, receives_results=results, may_store=False))


def store_dataset(settings: Settings, factory: sessionmaker[Session], ds: Dataset, **extra: object) -> int:
    """Write *ds* where the SCP would and index it (record_instance); its study id."""
    relative = Path("dicom") / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path = settings.resolved_data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    meta = InstanceMeta(
        patient=PatientDemographics(identifier=str(ds.PatientID), name=str(ds.get("PatientName", ""))),
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        file_path=relative.as_posix(),
        file_size=path.stat().st_size,
        modality=str(ds.Modality),
        body_part=str(ds.get("BodyPartExamined", "")),
        instance_number=int(ds.get("InstanceNumber", 1)),
        **extra,  # type: ignore[arg-type]
    )
    with unit_of_work(factory) as session:
        return record_instance(session, meta, now=utcnow() - dt.timedelta(minutes=1)).study_id


def cxr_read(settings: Settings, factory: sessionmaker[Session], patient: str = "RES1") -> tuple[int, str]:
    """A stored, complete synthetic chest radiograph study with one AI read; (read id, study UID)."""
    pixels = np.random.default_rng(7).integers(0, 4096, (256, 256), dtype=np.uint16)
    ds = build_cxr_dataset(pixels, patient_id=patient, patient_name="TEST^RESULTS", accession_number="ACC1")
    study_id = store_dataset(settings, factory, ds)
    read_in = ReadIn(
        model_id="demo-cxr",
        model_name=MODEL_NAME,
        model_version="0.3.1",
        sop_instance_uid=str(ds.SOPInstanceUID),
        is_synthetic=True,
        disclaimer=SYNTHETIC_DISCLAIMER,
        findings=(
            FindingIn("consolidation", "Consolidation", 0.91, 0.5, 1),
            FindingIn("nodule_mass", "Nodule/mass", 0.12, 0.5, 2),
        ),
    )
    with unit_of_work(factory) as session:
        assert [s.id for s in complete_quiet_series(session, quiet=dt.timedelta(seconds=1))] == [study_id]
        read = record_read(session, study_id, None, read_in)
        return read.id, str(ds.StudyInstanceUID)


def count(factory: sessionmaker[Session], model: type) -> int:
    with unit_of_work(factory) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def deliveries(factory: sessionmaker[Session]) -> list[Delivery]:
    with unit_of_work(factory) as session:
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        for row in rows:
            _ = row.attempt_log  # loaded while the session is open
        return rows


def outbox_tasks(factory: sessionmaker[Session]) -> list[tuple[str, dict[str, object]]]:
    with unit_of_work(factory) as session:
        return [
            (m.task, dict(m.kwargs))
            for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        ]


# --- building ----------------------------------------------------------------------------------


def test_build_records_objects_instances_and_deliveries_once(
    context: WorkerContext, session_factory: sessionmaker[Session]
) -> None:
    settings = context.settings
    add_destination(session_factory, "PACS", 104)
    add_destination(session_factory, "VIEWER", 105, results=False)  # not a destination
    read_id, study_uid = cxr_read(settings, session_factory)

    assert build_results(context, read_id) == "built"

    with unit_of_work(session_factory) as session:
        objects = list(session.scalars(select(ResultObject)))
        assert [o.kind for o in objects] == [ResultKind.SR]
        sr = objects[0]
        instance = session.get(Instance, sr.instance_id)
        assert instance is not None and instance.sop_instance_uid == sr.sop_instance_uid
        series = session.get(Series, instance.series_id)
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        assert series is not None and series.study_id == study.id and series.modality == "SR"
        # Our own object neither re-opens the study nor waits for a quiet period of its own:
        assert series.status == ReceiveStatus.COMPLETE and study.status == ReceiveStatus.COMPLETE
        assert complete_quiet_series(session, quiet=dt.timedelta(0)) == []
        path = settings.resolved_data_dir / instance.file_path
    with config.strict_reading():
        ds = dcmread(path)
        for _ in ds.iterall():
            pass
    assert ds.Modality == "SR" and ds.StudyInstanceUID == study_uid
    assert ds.SOPInstanceUID == sr.sop_instance_uid
    texts = {str(e.value) for e in ds.iterall() if e.VR in ("LO", "UT", "ST", "LT", "SH")}
    assert any(MODEL_NAME in t for t in texts)  # the model is named in the SR

    rows = deliveries(session_factory)
    assert [(d.status, d.attempts) for d in rows] == [(DeliveryStatus.PENDING, 0)]
    assert (DELIVER_RESULT_TASK, {"delivery_id": rows[0].id}) in outbox_tasks(session_factory)

    # Redelivery of the task: nothing new.
    assert build_results(context, read_id) == "exists"
    assert count(session_factory, ResultObject) == 1
    assert count(session_factory, Delivery) == 1
    assert count(session_factory, Instance) == 2


@SQLITE_ONLY
def test_revision_references_its_predecessor(
    context: WorkerContext, session_factory: sessionmaker[Session]
) -> None:
    read_id, _study_uid = cxr_read(context.settings, session_factory)
    assert build_results(context, read_id) == "built"
    assert build_results(context, read_id, revise=True) == "built"
    with unit_of_work(session_factory) as session:
        first, second = session.scalars(select(ResultObject).order_by(ResultObject.id)).all()
        assert second.predecessor_sop_instance_uid == first.sop_instance_uid
        assert first.series_instance_uid != second.series_instance_uid
        instance = session.get(Instance, second.instance_id)
        assert instance is not None
        path = context.settings.resolved_data_dir / instance.file_path
    ds = dcmread(path)
    referenced = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == first.sop_instance_uid


@SQLITE_ONLY
def ct_read_with_mask(
    settings: Settings, session_factory: sessionmaker[Session], patient_id: str, code: str = "nodule"
) -> tuple[int, str, list[str]]:
    """A 3-slice CT series (pydicom's CT_small, 5 mm apart) with a read whose mask marks the middle
    slice, as the 3D model leaves it: (read id, study UID, source SOP instance UIDs)."""
    base = dcmread(str(get_testdata_file("CT_small.dcm")))
    study_uid, series_uid, frame = generate_uid(), generate_uid(), generate_uid()
    uids: list[str] = []
    for k in range(3):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * k]
        ds.PatientID = patient_id
        study_id = store_dataset(settings, session_factory, ds)
        uids.append(str(ds.SOPInstanceUID))
    mask = np.zeros((3, int(base.Rows), int(base.Columns)), dtype=np.uint8)
    mask[1, 40:60, 40:60] = 1
    mask_name = f"mask-{patient_id}.npz"
    np.savez(settings.results_dir / mask_name, mask=mask, sop_instance_uids=np.array(uids))
    with unit_of_work(session_factory) as session:
        read = record_read(
            session,
            study_id,
            None,
            ReadIn(
                "demo-ct",
                "CT nodule demo",
                "0.1.0",
                uids[1],
                True,
                SYNTHETIC_DISCLAIMER,
                findings=(FindingIn(code, "Nodule", 0.8, 0.5, 1),),
            ),
        )
        read.series_uid = series_uid
        read.mask_path = f"results/{mask_name}"
        return read.id, study_uid, uids


def test_read_with_a_mask_gets_an_sr_and_a_seg(
    context: WorkerContext, session_factory: sessionmaker[Session]
) -> None:
    """A 3D read (series UID + mask .npz): every instance of the series is a source; SR then SEG."""
    settings = context.settings
    read_id, study_uid, uids = ct_read_with_mask(settings, session_factory, "CT1")

    assert build_results(context, read_id) == "built"
    with unit_of_work(session_factory) as session:
        kinds = [o.kind for o in session.scalars(select(ResultObject).order_by(ResultObject.id))]
        seg = session.scalars(select(ResultObject).where(ResultObject.kind == ResultKind.SEG)).one()
        seg_file = session.scalars(select(Instance.file_path).where(Instance.id == seg.instance_id)).one()
    assert kinds == [ResultKind.SR, ResultKind.SEG]
    seg_ds = dcmread(settings.resolved_data_dir / seg_file)
    assert seg_ds.Modality == "SEG" and seg_ds.StudyInstanceUID == study_uid
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in seg_ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(uids)  # the whole series was given as the source


@SQLITE_ONLY
def test_missing_source_fails_the_build_visibly(
    context: WorkerContext, session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    read_id, _ = cxr_read(context.settings, session_factory)
    with unit_of_work(session_factory) as session:
        for instance in session.scalars(select(Instance)):
            (context.settings.resolved_data_dir / instance.file_path).unlink()
    assert build_results(context, read_id) == "failed"
    assert "source file is missing" in caplog.text
    assert count(session_factory, ResultObject) == 0


def read_row(factory: sessionmaker[Session], read_id: int) -> AIRead:
    with unit_of_work(factory) as session:
        read = session.get(AIRead, read_id)
        assert read is not None
        return read


@SQLITE_ONLY
def test_a_failed_build_is_recorded_listed_shown_and_cleared_by_a_rebuild(
    context: WorkerContext, session_factory: sessionmaker[Session]
) -> None:
    """The source image is gone when the task runs: the read carries the reason (no patient name),
    the admin API, ``clinic dicom build-failures`` and the study page show it, and once the file
    is back ``clinic dicom resend`` builds the objects and the failure is gone."""
    from fastapi.testclient import TestClient

    from clinic.auth.models import Role
    from clinic.web.app import create_app
    from tests.clinic.helpers import add_user, bearer, token_for
    from tests.clinic.test_network import invoke

    settings = context.settings
    read_id, study_uid = cxr_read(settings, session_factory)
    with unit_of_work(session_factory) as session:
        (source,) = session.scalars(select(Instance)).all()
        relative, study_id = source.file_path, source.series.study_id
    path = settings.resolved_data_dir / relative
    kept = path.read_bytes()
    path.unlink()

    assert build_results(context, read_id) == "failed"
    read = read_row(session_factory, read_id)
    assert read.results_error == f"read {read_id}: a source file is missing: {relative}"
    assert read.results_failed_at is not None
    assert "TEST" not in read.results_error and str(settings.resolved_data_dir) not in read.results_error
    assert count(session_factory, ResultObject) == 0

    with unit_of_work(session_factory) as session:
        (view,) = list_build_failures(session)
        assert list_build_failures(session, study_uid="9.9.9") == []
    assert (view.read_id, view.study_uid, view.model_name, view.objects) == (
        read_id,
        study_uid,
        MODEL_NAME,
        0,
    )

    with TestClient(create_app(settings, session_factory)) as client:
        add_user(session_factory, "admin1", Role.ADMIN)
        add_user(session_factory, "rad1", Role.RADIOLOGIST)
        admin, radiologist = bearer(token_for(client, "admin1")), bearer(token_for(client, "rad1"))
        listed = client.get("/api/admin/dicom/build-failures", headers=admin)
        assert listed.status_code == 200, listed.text
        (row,) = listed.json()
        assert (row["read_id"], row["study_uid"], row["model_name"], row["model_version"]) == (
            read_id,
            study_uid,
            MODEL_NAME,
            "0.3.1",
        )
        assert row["reason"] == read.results_error and row["failed_at"] is not None and row["objects"] == 0
        assert client.get("/api/admin/dicom/build-failures", headers=radiologist).status_code == 403
        detail = client.get(f"/api/radiology/studies/{study_id}", headers=radiologist)
        assert detail.status_code == 200, detail.text
        assert [r["results_error"] for r in detail.json()["reads"]] == [read.results_error]
        page = client.get(f"/radiology/studies/{study_id}", headers=radiologist)
        assert page.status_code == 200
        assert f"Result objects could not be built: {read.results_error}" in page.text

    code, out = invoke(settings.resolved_data_dir, "dicom", "build-failures")
    assert code == 0, out
    assert "Result objects not built (1)" in out and "a source file is missing" in out
    assert study_uid in out and f"{MODEL_NAME} 0.3.1" in out
    code, out = invoke(settings.resolved_data_dir, "dicom", "deliveries")
    assert code == 0 and "1 AI read(s) have result objects that could not be built" in out, out

    # The cause is fixed (the file is back); the replay builds the objects and clears the failure.
    path.write_bytes(kept)
    code, out = invoke(settings.resolved_data_dir, "dicom", "resend", study_uid)
    assert code == 0 and "result objects of 1 read(s) to be built" in out, out
    assert (BUILD_RESULTS_TASK, {"read_id": read_id}) in outbox_tasks(session_factory)
    assert build_results(context, read_id) == "built"
    read = read_row(session_factory, read_id)
    assert (read.results_error, read.results_failed_at) == ("", None)
    code, out = invoke(settings.resolved_data_dir, "dicom", "build-failures")
    assert code == 0 and "Result objects not built (0)" in out, out


@SQLITE_ONLY
def test_a_permanent_fault_outside_the_builder_is_recorded_and_raised(
    context: WorkerContext, session_factory: sessionmaker[Session]
) -> None:
    """Not a BuildError and not transient (the source file is no DICOM file any more): the task
    fails as before (Celery does not retry it), and the read says why."""
    from pydicom.errors import InvalidDicomError

    read_id, _study_uid = cxr_read(context.settings, session_factory)
    with unit_of_work(session_factory) as session:
        (source,) = session.scalars(select(Instance.file_path)).all()
    (context.settings.resolved_data_dir / source).write_bytes(b"not a DICOM file")
    with pytest.raises(InvalidDicomError):
        build_results(context, read_id)
    read = read_row(session_factory, read_id)
    assert read.results_error.startswith("InvalidDicomError: "), read.results_error
    assert len(read.results_error.splitlines()) == 1 and read.results_failed_at is not None


# --- delivering --------------------------------------------------------------------------------


def built(context: WorkerContext, factory: sessionmaker[Session], port: int) -> tuple[int, str]:
    """A read whose SR is built for destination PACS on *port*: (delivery id, study UID)."""
    add_destination(factory, "PACS", port)
    read_id, study_uid = cxr_read(context.settings, factory)
    assert build_results(context, read_id) == "built"
    (delivery,) = deliveries(factory)
    return delivery.id, study_uid


@SQLITE_ONLY
def test_delivery_success_is_recorded_once(
    context: WorkerContext, session_factory: sessionmaker[Session], peer: Peer
) -> None:
    delivery_id, study_uid = built(context, session_factory, peer.port)
    assert deliver_result(context, delivery_id) == "success"
    (ds,) = peer.received
    assert ds.StudyInstanceUID == study_uid and ds.Modality == "SR"
    assert peer.calling == ["CLINIC"]  # we call as CLINIC_DICOM_AE, which the PACS knows
    (delivery,) = deliveries(session_factory)
    assert delivery.status == DeliveryStatus.SENT and delivery.sent_at is not None
    assert [(a.outcome, a.status_code) for a in delivery.attempt_log] == [("success", 0)]
    assert delivery.attempt_log[0].duration_ms is not None
    # a redelivered message sends nothing again
    assert deliver_result(context, delivery_id) == "skipped"
    assert len(peer.received) == 1


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("status", "outcome", "final"),
    [
        (0xA900, "permanent", DeliveryStatus.FAILED),  # Error: Data Set does not match SOP Class
        (0xC000, "permanent", DeliveryStatus.FAILED),  # Error: Cannot understand
        (0x0124, "permanent", DeliveryStatus.FAILED),  # Refused: Not Authorized
        (0xA700, "transient", DeliveryStatus.PENDING),  # Refused: Out of Resources, i.e. not now
        (0xB000, "success", DeliveryStatus.SENT),  # Warning: Coercion of Data Elements (stored)
    ],
)
def test_store_status_decides_the_outcome(
    context: WorkerContext,
    session_factory: sessionmaker[Session],
    peer: Peer,
    status: int,
    outcome: str,
    final: DeliveryStatus,
) -> None:
    peer.status = status
    delivery_id, _ = built(context, session_factory, peer.port)
    assert deliver_result(context, delivery_id) == outcome
    (delivery,) = deliveries(session_factory)
    assert delivery.status == final
    assert [(a.outcome, a.status_code) for a in delivery.attempt_log] == [(outcome, status)]
    if final is DeliveryStatus.FAILED:
        assert f"0x{status:04X}" in delivery.last_error


def test_unreachable_destination_backs_off_and_loses_nothing(
    context: WorkerContext, session_factory: sessionmaker[Session], peer: Peer
) -> None:
    closed = free_port()  # nothing listens there
    delivery_id, _ = built(context, session_factory, closed)
    started = utcnow()
    assert deliver_result(context, delivery_id) == "transient"
    assert deliver_result(context, delivery_id) == "transient"
    (delivery,) = deliveries(session_factory)
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 2
    assert [a.outcome for a in delivery.attempt_log] == ["transient", "transient"]
    assert "association not established" in delivery.last_error
    # backoff: 0.2 s then 0.4 s after the second failure
    last = delivery.attempt_log[-1]
    wait = (delivery.next_attempt_at - last.at).total_seconds() - (last.duration_ms or 0) / 1000
    assert 0.4 <= wait <= 0.9, wait  # from the end of the attempt (plus the commit's own time)
    with unit_of_work(session_factory) as session:
        assert requeue_due_deliveries(session, LEASE, now=started) == []  # not due yet
    with unit_of_work(session_factory) as session:
        assert requeue_due_deliveries(session, LEASE, now=delivery.next_attempt_at) == [delivery_id]
        # handed out: not again until its lease runs out
        assert requeue_due_deliveries(session, LEASE, now=delivery.next_attempt_at) == []
    assert outbox_tasks(session_factory).count((DELIVER_RESULT_TASK, {"delivery_id": delivery_id})) == 2
    # The PACS comes back (here: at another port).
    with unit_of_work(session_factory) as session:
        update_ae(session, "PACS", with_changes(get_ae(session, "PACS"), port=peer.port))
    assert deliver_result(context, delivery_id) == "success"
    assert len(peer.received) == 1
    (delivery,) = deliveries(session_factory)
    assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 3


@SQLITE_ONLY
def test_rejected_association_is_permanent(
    context: WorkerContext, session_factory: sessionmaker[Session]
) -> None:
    picky = Peer(require_calling=["SOMEONE"])  # rejects us: calling AE title not recognised
    try:
        delivery_id, _ = built(context, session_factory, picky.port)
        assert deliver_result(context, delivery_id) == "permanent"
    finally:
        picky.stop()
    (delivery,) = deliveries(session_factory)
    assert delivery.status == DeliveryStatus.FAILED
    assert (
        "Rejected Permanent" in delivery.last_error
        and "Calling AE title not recognised" in delivery.last_error
    )


@SQLITE_ONLY
def test_a_lost_attempt_is_taken_over_after_its_lease(
    context: WorkerContext, session_factory: sessionmaker[Session], peer: Peer
) -> None:
    delivery_id, _ = built(context, session_factory, peer.port)
    with unit_of_work(session_factory) as session:
        first = claim_delivery(session, delivery_id)  # this worker then dies
    assert first is not None
    with unit_of_work(session_factory) as session:
        assert claim_delivery(session, delivery_id) is None  # still running within its lease
    later = utcnow() + ATTEMPT_LEASE + dt.timedelta(seconds=1)
    with unit_of_work(session_factory) as session:
        assert requeue_due_deliveries(session, LEASE, now=later) == [delivery_id]
        second = claim_delivery(session, delivery_id, now=later)
    assert second is not None and second.attempt_id != first.attempt_id
    (delivery,) = deliveries(session_factory)
    assert [a.outcome for a in delivery.attempt_log] == ["transient", "running"]
    assert "did not finish" in delivery.attempt_log[0].error


def test_resend_replays_failed_and_reaches_new_destinations(
    context: WorkerContext, session_factory: sessionmaker[Session], peer: Peer
) -> None:
    peer.status = 0xA900
    delivery_id, study_uid = built(context, session_factory, peer.port)
    assert deliver_result(context, delivery_id) == "permanent"
    second = Peer(ae_title="ARCHIVE")
    try:
        add_destination(session_factory, "ARCHIVE", second.port)
        peer.status = 0x0000
        with unit_of_work(session_factory) as session:
            replay = replay_study(session, context.settings, study_uid)
        assert replay.rebuilt_reads == []
        assert len(replay.deliveries) == 2 and delivery_id in replay.deliveries
        for handed in replay.deliveries:
            assert (DELIVER_RESULT_TASK, {"delivery_id": handed}) in outbox_tasks(session_factory)
            assert deliver_result(context, handed) == "success"
        assert len(peer.received) == 2 and len(second.received) == 1  # the refused try, then the replay
        with unit_of_work(session_factory) as session:
            views = list_deliveries(session, study_uid=study_uid)
            assert {(v.destination, v.status) for v in views} == {("PACS", "sent"), ("ARCHIVE", "sent")}
            pacs = next(v for v in views if v.destination == "PACS")
            assert [a.outcome for a in pacs.attempt_log] == ["permanent", "success"]
            # sent ones are sent again only when asked
            assert replay_study(session, context.settings, study_uid).deliveries == []
            assert len(replay_study(session, context.settings, study_uid, include_sent=True).deliveries) == 2
    finally:
        second.stop()


@SQLITE_ONLY
def test_resend_builds_the_objects_of_reads_that_have_none(
    context: WorkerContext, session_factory: sessionmaker[Session]
) -> None:
    read_id, study_uid = cxr_read(context.settings, session_factory)
    with unit_of_work(session_factory) as session:
        replay = replay_study(session, context.settings, study_uid)
    assert replay.rebuilt_reads == [read_id]
    assert (BUILD_RESULTS_TASK, {"read_id": read_id}) in outbox_tasks(session_factory)


@SQLITE_ONLY
def test_a_disabled_destination_fails_the_delivery_until_replayed(
    context: WorkerContext, session_factory: sessionmaker[Session], peer: Peer
) -> None:
    delivery_id, _ = built(context, session_factory, peer.port)
    with unit_of_work(session_factory) as session:
        update_ae(session, "PACS", with_changes(get_ae(session, "PACS"), enabled=False))
    assert deliver_result(context, delivery_id) == "skipped"
    (delivery,) = deliveries(session_factory)
    assert delivery.status == DeliveryStatus.FAILED and "does not receive results" in delivery.last_error
    assert peer.received == []


@SQLITE_ONLY
def test_sr_and_seg_of_a_ct_read_arrive_in_orthanc_in_the_same_study(
    context: WorkerContext, session_factory: sessionmaker[Session], orthanc_factory: Any
) -> None:
    """Issue 3: the SR and the SEG of a CT read arrive back in the PACS (Orthanc) in the same study."""
    orthanc = orthanc_factory()
    with unit_of_work(session_factory) as session:
        add_ae(session, AEIn("ORTHANC", "127.0.0.1", orthanc.dicom_port, receives_results=True))
    read_id, study_uid, _ = ct_read_with_mask(context.settings, session_factory, "CT2", code="lung_nodule")

    assert build_results(context, read_id) == "built"
    for delivery in deliveries(session_factory):
        assert deliver_result(context, delivery.id) == "success"
    arrived = orthanc.instances_of_study(study_uid)
    assert sorted(i["Modality"] for i in arrived) == ["SEG", "SR"]  # ours only: the CT was never sent
    assert {i["StudyInstanceUID"] for i in arrived} == {study_uid}
