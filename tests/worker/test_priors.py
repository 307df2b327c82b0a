"""``clinic.fetch_priors``: the task function against a real PACS (Orthanc) and our real SCP, on
SQLite and PostgreSQL; the relay's trigger; the choice of priors; a PACS that is down or says no.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import AnalysisJob
from clinic.db import unit_of_work, utcnow
from clinic.imaging.models import PriorStatus, Series, Study, StudyPrior
from clinic.imaging.priors import (
    FETCH_PRIORS_TASK,
    QUERY_ROW_UID,
    Candidate,
    PriorQuery,
    instance_count,
    list_priors,
    select_priors,
)
from clinic.network.service import AEIn, add_ae, update_ae
from clinic.outbox.models import OutboxMessage
from clinic.radiology.service import study_detail, worklist
from clinic.settings import Environment, Settings
from integrations.dicom.scp import ScpServer, start_scp
from integrations.dicom.scu import send_files
from integrations.dicom.synthetic import build_cxr_dataset, write_dataset
from tests.conftest import free_port
from tests.peers.orthanc import Orthanc
from worker.app import create_celery
from worker.priors_tasks import PriorsRetryError, fetch_priors
from worker.relay import Relay

TODAY = dt.date.today()
#: The C-MOVE path and the PACS-down path run on both databases; the rest need not.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# --- the choice of priors (pure) ---------------------------------------------------------------------


def _candidate(uid: str, day: dt.date | None, *modalities: str) -> Candidate:
    return Candidate(uid, day, f"study {uid}", tuple(modalities), "", "PACS")


def test_select_priors_keeps_older_studies_of_a_shared_modality_newest_first() -> None:
    query = PriorQuery(
        study_id=1,
        study_uid="1.1",
        patient_id=1,
        patient_identifier="P1",
        patient_issuer="",
        modalities=("DX",),
        study_date=dt.date(2024, 6, 1),
        sources=(),
        limit=3,
    )
    candidates = [
        _candidate("1.1", dt.date(2024, 6, 1), "DX"),  # the current study
        _candidate("2.1", dt.date(2020, 1, 1), "DX"),
        _candidate("2.2", dt.date(2023, 1, 1), "DX", "CR"),
        _candidate("2.3", dt.date(2022, 1, 1), "CT"),  # another modality
        _candidate("2.4", dt.date(2024, 7, 1), "DX"),  # newer than the current study
        _candidate("2.5", dt.date(2024, 6, 1), "DX"),  # same day: cannot tell which came first
        _candidate("2.6", None, "DX"),  # undated: last
        _candidate("2.7", dt.date(2021, 1, 1)),  # no Modalities in Study: the PACS matched the key
        _candidate("2.2", dt.date(2023, 1, 1), "DX"),  # a second source holding the same study
    ]
    assert [c.study_uid for c in select_priors(query, candidates)] == ["2.2", "2.7", "2.1"]
    unlimited = PriorQuery(**{**query.__dict__, "limit": 10})
    assert [c.study_uid for c in select_priors(unlimited, candidates)] == ["2.2", "2.7", "2.1", "2.6"]
    assert select_priors(PriorQuery(**{**query.__dict__, "limit": 0}), candidates) == []
    undated = PriorQuery(**{**query.__dict__, "study_date": None, "limit": 10})
    assert [c.study_uid for c in select_priors(undated, candidates)][:2] == ["2.4", "2.5"]


# --- a PACS, our SCP, a current study -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the module (stopping one takes ~3 s); each test uses patients of its own."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), "PACS")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings_db(db_url: str, data_dir: Path) -> Settings:
    s = Settings(
        data_dir=data_dir,
        database_url=db_url,
        environment=Environment.TEST,
        dicom_ae="CLINIC",
        dicom_host="127.0.0.1",
        series_quiet_seconds=0.2,
        priors_limit=3,
    )
    s.ensure_dirs()
    return s


@pytest.fixture
def scp(settings_db: Settings, session_factory: sessionmaker[Session]) -> Iterator[ScpServer]:
    server = start_scp(settings_db, session_factory, port=0)
    try:
        yield server
    finally:
        server.shutdown()


def _radiograph(folder: Path, patient: str, day: dt.date, seed: int, modality: str = "DX") -> Path:
    pixels = np.random.default_rng(seed).integers(0, 4000, (64, 64), dtype=np.uint16)
    ds = build_cxr_dataset(
        pixels,
        patient_id=patient,
        patient_name=f"TEST^{patient}",
        accession_number=f"A{seed}",
        modality=modality,  # type: ignore[arg-type]
        study_datetime=dt.datetime.combine(day, dt.time(10, 0)),
        study_description=f"{modality} CHEST {day.isoformat()}",
    )
    return write_dataset(ds, folder / f"{patient}-{seed}.dcm")


class History:
    """A patient's studies on the PACS: two older DX, one older CR, one newer DX; another patient's DX."""

    def __init__(self, pacs: Orthanc, folder: Path) -> None:
        self.patient = f"P{uuid.uuid4().hex[:12]}"
        self.other_patient = self.patient + "B"
        self.uids: dict[str, str] = {}
        studies = {
            "dx_2y": (self.patient, TODAY - dt.timedelta(days=730), "DX"),
            "dx_1y": (self.patient, TODAY - dt.timedelta(days=365), "DX"),
            "cr_6m": (self.patient, TODAY - dt.timedelta(days=180), "CR"),
            "dx_future": (self.patient, TODAY + dt.timedelta(days=30), "DX"),
            "other": (self.other_patient, TODAY - dt.timedelta(days=100), "DX"),
        }
        for seed, (name, (patient, day, modality)) in enumerate(studies.items(), start=1):
            path = _radiograph(folder, patient, day, seed, modality)
            pacs.upload(path)
            self.uids[name] = _study_uid(path)


def _study_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _add_source(factory: sessionmaker[Session], pacs: Orthanc, method: str = "move", port: int = 0) -> None:
    with unit_of_work(factory) as session:
        add_ae(
            session,
            AEIn(
                ae_title=pacs.ae_title,
                host="127.0.0.1",
                port=port or pacs.dicom_port,
                query_priors=True,
                retrieve_method=method,
            ),
        )


def _current_study(settings: Settings, factory: sessionmaker[Session], scp: ScpServer, patient: str) -> int:
    """Today's study of *patient*, sent to our SCP with C-STORE; its id."""
    path = _radiograph(settings.resolved_data_dir.parent, patient, TODAY, seed=99)
    result = send_files("127.0.0.1", scp.port, settings.dicom_ae, [path])
    assert result[0].ok, result
    with unit_of_work(factory) as session:
        study_id = session.scalar(select(Study.id).where(Study.study_uid == _study_uid(path)))
        assert study_id is not None
        return int(study_id)


def _quiet(factory: sessionmaker[Session]) -> None:
    """Let every series' quiet period pass (as if its last instance came 5 s ago)."""
    with unit_of_work(factory) as session:
        session.execute(update(Series).values(last_received_at=utcnow() - dt.timedelta(seconds=5)))


def _priors(factory: sessionmaker[Session], study_id: int) -> dict[str, StudyPrior]:
    with unit_of_work(factory) as session:
        rows = session.scalars(select(StudyPrior).where(StudyPrior.study_id == study_id)).all()
        return {r.prior_study_uid: r for r in rows}


# --- C-MOVE -------------------------------------------------------------------------------------------


def test_fetch_priors_by_move_then_relay_leaves_them_unanalysed(
    pacs: Orthanc,
    tmp_path: Path,
    settings_db: Settings,
    session_factory: sessionmaker[Session],
    scp: ScpServer,
) -> None:
    history = History(pacs, tmp_path)
    pacs.add_modality("clinic", settings_db.dicom_ae, "127.0.0.1", scp.port)
    _add_source(session_factory, pacs, "move")
    study_id = _current_study(settings_db, session_factory, scp, history.patient)

    report = fetch_priors(settings_db, session_factory, study_id)

    wanted = [history.uids["dx_1y"], history.uids["dx_2y"]]  # DX, older, newest first
    assert report.fetched == wanted and report.failed == [] and report.retrying == []
    rows = _priors(session_factory, study_id)
    assert set(rows) == set(wanted)
    for uid in wanted:
        row = rows[uid]
        assert row.status == PriorStatus.FETCHED and row.error == "" and row.fetched_at is not None
        assert row.source_ae == "PACS" and row.modality == "DX"
    assert rows[history.uids["dx_1y"]].prior_study_date == TODAY - dt.timedelta(days=365)
    with unit_of_work(session_factory) as session:
        current = session.get(Study, study_id)
        assert current is not None and not current.is_prior
        priors = session.scalars(select(Study).where(Study.study_uid.in_(wanted))).all()
        assert len(priors) == 2
        assert all(p.is_prior and p.patient_id == current.patient_id for p in priors)
        assert all(instance_count(session, uid) == 1 for uid in wanted)
        for name in ("cr_6m", "dx_future", "other"):  # another modality, newer, another patient
            assert session.scalar(select(Study.id).where(Study.study_uid == history.uids[name])) is None

    # Idempotent: a redelivered task retrieves nothing again and adds no row.
    again = fetch_priors(settings_db, session_factory, study_id)
    assert (
        again.fetched == [] and again.failed == [] and set(_priors(session_factory, study_id)) == set(wanted)
    )

    # The relay completes the current study and the priors: analysis and priors for the current
    # one only; neither analysis nor priors of priors.
    relay = Relay(settings_db, create_celery(settings_db), session_factory)
    _quiet(session_factory)
    assert relay.sweep()[0] == 3
    relay.close()
    with unit_of_work(session_factory) as session:
        jobs = session.scalars(select(AnalysisJob)).all()
        assert [j.study_id for j in jobs] == [study_id]
        messages = session.scalars(select(OutboxMessage).where(OutboxMessage.task == FETCH_PRIORS_TASK)).all()
        assert [m.kwargs for m in messages] == [{"study_id": study_id}]
        rows_listed = [r.study_id for r in worklist(session, settings_db)]
        assert rows_listed == [study_id]  # priors are not work items
        detail = study_detail(session, settings_db, study_id)
        assert detail is not None and [p.prior_study_uid for p in detail.priors] == wanted
        assert all(p.prior_study_id is not None for p in detail.priors)


# --- C-GET --------------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_fetch_priors_by_get_stores_them_and_honours_the_limit(
    pacs: Orthanc,
    tmp_path: Path,
    settings_db: Settings,
    session_factory: sessionmaker[Session],
    scp: ScpServer,
) -> None:
    history = History(pacs, tmp_path)
    _add_source(session_factory, pacs, "get")
    study_id = _current_study(settings_db, session_factory, scp, history.patient)
    limited = settings_db.model_copy(update={"priors_limit": 1})

    report = fetch_priors(limited, session_factory, study_id)

    assert report.fetched == [history.uids["dx_1y"]] and report.failed == []
    with unit_of_work(session_factory) as session:
        prior = session.scalars(select(Study).where(Study.study_uid == history.uids["dx_1y"])).one()
        assert prior.is_prior and instance_count(session, prior.study_uid) == 1
        assert session.scalar(select(Study.id).where(Study.study_uid == history.uids["dx_2y"])) is None
        (info,) = list_priors(session, study_id)
        assert info.status == PriorStatus.FETCHED and info.prior_study_id == prior.id


# --- a PACS that is down, a PACS that says no ---------------------------------------------------------


def test_a_pacs_that_is_down_means_retry_then_a_visible_failure(
    pacs: Orthanc,
    tmp_path: Path,
    settings_db: Settings,
    session_factory: sessionmaker[Session],
    scp: ScpServer,
) -> None:
    history = History(pacs, tmp_path)
    down = Orthanc(tmp_path / "never-started", "DOWN")  # its port has no listener
    _add_source(session_factory, down, "move", port=free_port())
    study_id = _current_study(settings_db, session_factory, scp, history.patient)

    with pytest.raises(PriorsRetryError, match="DOWN: no association with DOWN@127.0.0.1"):
        fetch_priors(settings_db, session_factory, study_id)
    row = _priors(session_factory, study_id)[QUERY_ROW_UID]
    assert row.status == PriorStatus.PENDING and row.error.startswith("retrying: DOWN: no association")

    report = fetch_priors(settings_db, session_factory, study_id, final_attempt=True)
    assert report.retrying and report.fetched == [] and report.failed == []
    row = _priors(session_factory, study_id)[QUERY_ROW_UID]
    assert row.status == PriorStatus.FAILED and "connection refused" in row.error
    with unit_of_work(session_factory) as session:
        (info,) = list_priors(session, study_id)
        assert info.is_query_report and info.source_ae == "DOWN" and info.prior_study_id is None

    # The PACS is back (here: the source now points at a PACS that answers, by C-GET): a replay
    # fetches the priors and the report of the failed query goes.
    with unit_of_work(session_factory) as session:
        update_ae(
            session,
            "DOWN",
            AEIn(
                ae_title="DOWN",
                host="127.0.0.1",
                port=pacs.dicom_port,
                query_priors=True,
                retrieve_method="get",
            ),
        )
    replay = fetch_priors(settings_db, session_factory, study_id)
    assert replay.fetched == [history.uids["dx_1y"], history.uids["dx_2y"]] and not replay.retrying
    assert set(_priors(session_factory, study_id)) == set(replay.fetched)


@SQLITE_ONLY
def test_a_pacs_that_refuses_the_move_fails_the_prior_with_the_reason(
    pacs: Orthanc,
    tmp_path: Path,
    settings_db: Settings,
    session_factory: sessionmaker[Session],
    scp: ScpServer,
) -> None:
    history = History(pacs, tmp_path)
    # We call ourselves CLINIC2 here: a move destination the PACS does not know.
    unknown = settings_db.model_copy(update={"dicom_ae": "CLINIC2", "priors_limit": 1})
    _add_source(session_factory, pacs, "move")
    study_id = _current_study(settings_db, session_factory, scp, history.patient)

    report = fetch_priors(unknown, session_factory, study_id)

    assert report.failed == [history.uids["dx_1y"]] and report.fetched == [] and report.retrying == []
    row = _priors(session_factory, study_id)[history.uids["dx_1y"]]
    assert row.status == PriorStatus.FAILED and row.fetched_at is None
    assert row.error.startswith("C-MOVE 0x") and "0 completed" in row.error
    with unit_of_work(session_factory) as session:
        prior = session.scalars(select(Study).where(Study.study_uid == history.uids["dx_1y"])).one()
        assert prior.is_prior and instance_count(session, prior.study_uid) == 0
        (info,) = list_priors(session, study_id)
        assert info.prior_study_id is None  # nothing to link to


@SQLITE_ONLY
def test_relay_asks_for_priors_only_when_a_source_is_configured(
    pacs: Orthanc, settings_db: Settings, session_factory: sessionmaker[Session], scp: ScpServer
) -> None:
    first = _current_study(settings_db, session_factory, scp, f"P{uuid.uuid4().hex[:12]}")
    relay = Relay(settings_db, create_celery(settings_db), session_factory)
    _quiet(session_factory)
    assert relay.sweep()[0] == 1
    _add_source(session_factory, pacs, "move")
    second = _current_study(settings_db, session_factory, scp, f"P{uuid.uuid4().hex[:12]}")
    _quiet(session_factory)
    assert relay.sweep()[0] == 1
    relay.close()
    with unit_of_work(session_factory) as session:
        messages = session.scalars(select(OutboxMessage).where(OutboxMessage.task == FETCH_PRIORS_TASK)).all()
        assert [(m.kwargs, m.queue) for m in messages] == [({"study_id": second}, "ingest")]
        assert {j.study_id for j in session.scalars(select(AnalysisJob))} == {first, second}
