"""The analysis task's decisions, run in this process against a real database and the demo model:
which instance a model reads, what is permanent and what is transient, and idempotency.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import AIRead, AnalysisJob, JobStatus
from clinic.ai.service import ReadIn, record_read, request_analysis
from clinic.db import make_engine, unit_of_work
from clinic.imaging.models import Study
from tests.conftest import free_port
from tests.worker.conftest import Stack, make_stack, phantom_radiograph
from worker.tasks import InputRef, WorkerContext, analyse_study, is_transient, plan_reads, retry_countdown


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path) -> Stack:
    return make_stack(request, tmp_path, "embedded", demo_models_dir, series_quiet_seconds=3600)


def _job_for(stack: Stack, study_uid: str) -> int:
    with unit_of_work(stack.session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        return request_analysis(session, study, "inference.cpu").id


def _job(factory: sessionmaker[Session], job_id: int) -> AnalysisJob:
    with unit_of_work(factory) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None
        return job


def test_reads_the_study_and_a_second_run_is_a_no_op(stack: Stack) -> None:
    study_uid = stack.store(phantom_radiograph(seed=5))
    job_id = _job_for(stack, study_uid)
    context = WorkerContext(stack.settings)
    assert analyse_study(context, job_id) == "done"
    assert analyse_study(context, job_id) == "skipped"  # DONE: claim_job says no
    job = _job(stack.session_factory, job_id)
    assert job.status == JobStatus.DONE and job.attempts == 1
    with unit_of_work(stack.session_factory) as session:
        (read,) = session.scalars(select(AIRead)).all()
        assert read.job_id == job_id and read.model_id == "cxr-demo"
        assert {f.code for f in read.findings} == {"consolidation", "nodule_mass"}
        for finding in read.findings:
            name = f"results/{study_uid}/cxr-demo-{read.model_version}-{finding.code}.png"
            assert finding.heatmap_path == name
            assert (stack.settings.resolved_data_dir / finding.heatmap_path).is_file()


def test_an_existing_read_is_not_predicted_again(stack: Stack) -> None:
    study_uid = stack.store(phantom_radiograph(seed=6))
    job_id = _job_for(stack, study_uid)
    context = WorkerContext(stack.settings)
    version = context.registry().get("cxr-demo").version
    with unit_of_work(stack.session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        record_read(
            session,
            study.id,
            None,
            ReadIn(
                model_id="cxr-demo",
                model_name="earlier",
                model_version=version,
                sop_instance_uid="1.2",
                is_synthetic=True,
            ),
        )
    assert analyse_study(context, job_id) == "done"
    with unit_of_work(stack.session_factory) as session:
        (read,) = session.scalars(select(AIRead)).all()
        assert read.model_name == "earlier" and read.findings == []
    assert not any(stack.settings.results_dir.rglob("*.png")), "predicted although a read existed"


def test_no_model_applies_means_done_without_a_read(stack: Stack) -> None:
    ds = phantom_radiograph(seed=2)
    ds.Modality = "MG"  # a mammogram: the chest-radiograph demo model does not apply
    job_id = _job_for(stack, stack.store(ds))
    assert analyse_study(WorkerContext(stack.settings), job_id) == "done"
    job = _job(stack.session_factory, job_id)
    assert job.status == JobStatus.DONE and job.error == ""
    with unit_of_work(stack.session_factory) as session:
        assert session.scalars(select(AIRead)).all() == []


def test_an_unreadable_image_fails_the_job_with_its_reason(stack: Stack) -> None:
    ds = phantom_radiograph(seed=2)
    study_uid = stack.store(ds)
    path = (
        stack.settings.resolved_data_dir
        / "dicom"
        / study_uid
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )
    path.write_bytes(b"not DICOM at all")
    job_id = _job_for(stack, study_uid)
    assert analyse_study(WorkerContext(stack.settings), job_id) == "failed"
    job = _job(stack.session_factory, job_id)
    assert job.status == JobStatus.FAILED
    assert "cxr-demo" in job.error and ds.SOPInstanceUID in job.error and "DICOM" in job.error
    assert job.lease_expires_at is None  # no lease left: it is not handed out again by itself


def test_a_missing_models_folder_fails_the_job(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings.model_copy(update={"models_dir": tmp_path / "no-such-models"})
    job_id = _job_for(stack, stack.store(phantom_radiograph(seed=2)))
    assert analyse_study(WorkerContext(settings), job_id) == "failed"
    job = _job(stack.session_factory, job_id)
    assert job.status == JobStatus.FAILED and "model bundle cannot be loaded" in job.error


def test_plan_prefers_the_frontal_view(demo_models_dir: Path) -> None:
    from inference.registry import ModelRegistry

    registry = ModelRegistry.from_directory(demo_models_dir, device="cpu")
    inputs = [
        InputRef("DX", "CHEST", "", "1.1", "a.dcm"),  # no view: accepted, but not preferred
        InputRef("DX", "CHEST", "AP", "1.2", "b.dcm"),
        InputRef("DX", "CHEST", "PA", "1.3", "c.dcm"),
        InputRef("CT", "CHEST", "", "1.4", "d.dcm"),
    ]
    plan = plan_reads(registry, inputs)
    assert [(model.model_id, ref.sop_instance_uid) for model, ref in plan] == [("cxr-demo", "1.3")]
    assert plan_reads(registry, inputs[3:]) == []


def test_transient_faults_are_told_apart(tmp_path: Path) -> None:
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(OperationalError) as caught:
        engine.connect()
    engine.dispose()
    assert is_transient(caught.value)
    assert is_transient(ConnectionRefusedError()) and is_transient(OSError(28, "No space left on device"))
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(ValueError("bad"))
    assert [retry_countdown(n) for n in (0, 1, 2, 10, 30)] == [1.0, 2.0, 4.0, 300.0, 300.0]
