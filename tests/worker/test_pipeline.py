"""Stored instance → quiet series → job + outbox → relay → broker → worker → model → one read.

Each test runs real ``python -m worker`` processes against a real database and broker, in the
embedded mode (SQLite + filesystem transport) and the scaled ones (PostgreSQL + Redis / RabbitMQ).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from clinic.ai.models import AnalysisJob, JobStatus
from clinic.ai.service import ANALYSE_STUDY_TASK, request_analysis
from clinic.db import unit_of_work
from clinic.imaging.models import Study
from clinic.outbox.models import OutboxMessage
from tests.worker.conftest import (
    MODES,
    Stack,
    make_stack,
    phantom_radiograph,
    real_chest_radiograph,
    wait_for,
)
from worker.app import create_celery, inference_queue

pytestmark = pytest.mark.slow

#: Bounded waits. The first task of a worker imports torch/monai and loads the models (~3-5 s on
#: two cores); a read of one radiograph takes well under a second after that.
ANALYSIS_TIMEOUT_S = 120.0


def wait_done(stack: Stack, study_uid: str, timeout: float = ANALYSIS_TIMEOUT_S) -> int:
    study_id = wait_for(lambda: stack.study_id(study_uid), 10, f"study {study_uid} to be indexed")

    def finished() -> bool:
        job = stack.job(study_id)
        return job is not None and job.status in (JobStatus.DONE, JobStatus.FAILED)

    wait_for(finished, timeout, f"the analysis of study {study_id} to finish ({stack.mode})")
    job = stack.job(study_id)
    assert job is not None
    assert job.status == JobStatus.DONE, f"job failed: {job.error}\n{stack.workers[-1].log()[-3000:]}"
    return int(study_id)


def assert_one_good_read(stack: Stack, study_id: int) -> None:
    reads = stack.reads(study_id)
    assert len(reads) == 1, [(r.model_id, r.model_version) for r in reads]
    read = reads[0]
    assert read.model_name and read.model_version and read.model_id
    assert read.is_synthetic and read.disclaimer == "synthetic demo model — not for clinical use"
    assert read.sop_instance_uid
    assert read.findings, "a read without findings"
    data_dir = stack.settings.resolved_data_dir
    for finding in read.findings:
        assert 0.0 <= finding.probability <= 1.0
        assert 0.0 < finding.threshold < 1.0
        assert finding.positive == (finding.probability >= finding.threshold)
        assert finding.heatmap_path, f"{finding.code} has no heatmap"
        assert not Path(finding.heatmap_path).is_absolute()
        path = data_dir / finding.heatmap_path
        assert path.parent == stack.settings.results_dir / path.parent.name
        with Image.open(path) as png:
            assert png.format == "PNG" and png.mode == "L"
            assert png.size[0] > 8 and png.size[1] > 8


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_reads_each_study_once(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path, stacks: list[Stack]
) -> None:
    stack = make_stack(request, tmp_path, mode, demo_models_dir)
    stacks.append(stack)
    worker = stack.start_worker()
    real = stack.store(real_chest_radiograph())
    phantom = stack.store(phantom_radiograph(seed=7, consolidation=True))

    for study_uid in (real, phantom):
        study_id = wait_done(stack, study_uid)
        assert_one_good_read(stack, study_id)
    with unit_of_work(stack.session_factory) as session:
        # (the reads' result objects go on the outbound queue: tests/worker/test_results_delivery.py)
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.task == ANALYSE_STUDY_TASK)).all()
        assert rows and all(row.published_at is not None and row.last_error == "" for row in rows)
        assert {row.queue for row in rows} == {"inference.cpu"}
    assert "JSONDecodeError" not in worker.log()
    assert worker.terminate() == 0, worker.log()[-3000:]


@pytest.mark.parametrize("mode", MODES[:2])
def test_duplicate_deliveries_give_one_read(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path, stacks: list[Stack]
) -> None:
    """The same job delivered many times, to two workers at once, and then re-opened: one read."""
    stack = make_stack(request, tmp_path, mode, demo_models_dir, series_quiet_seconds=3600)
    stacks.append(stack)
    study_uid = stack.store(phantom_radiograph(seed=3))
    study_id = stack.study_id(study_uid)
    assert study_id is not None
    # Create the job ourselves (the quiet timer is an hour) and deliver its message five times.
    with unit_of_work(stack.session_factory) as session:
        study = session.get(Study, study_id)
        assert study is not None
        job_id = request_analysis(session, study, inference_queue(stack.settings)).id
    app = create_celery(stack.settings)
    for _ in range(5):
        app.send_task(ANALYSE_STUDY_TASK, kwargs={"job_id": job_id}, queue="inference.cpu")
    app.close()
    for _ in range(2):
        stack.start_worker("--no-relay", name="dup")
    wait_done(stack, study_uid)
    job = stack.job(study_id)
    assert job is not None and job.attempts == 1, "a duplicate delivery ran the analysis again"
    assert stack.read_count(study_id) == 1

    # Re-open the finished job (a replay): the worker finds the read and does not add one.
    with unit_of_work(stack.session_factory) as session:
        study = session.get(Study, study_id)
        assert study is not None
        request_analysis(session, study, inference_queue(stack.settings))
    stack.start_worker(name="replay")  # with the relay: publishes the re-opened job's outbox row
    wait_for(
        lambda: (j := stack.job(study_id)) is not None and j.attempts == 2 and j.status == JobStatus.DONE,
        ANALYSIS_TIMEOUT_S,
        "the re-opened job to run again",
    )
    assert stack.read_count(study_id) == 1
    assert "already read study" in "".join(w.log() for w in stack.workers)


@pytest.mark.parametrize("mode", MODES[:2])
def test_worker_killed_during_analysis_recovers_with_one_read(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path, stacks: list[Stack]
) -> None:
    """SIGKILL while a job is RUNNING; after a restart the lease runs out, the relay hands the job
    out again and the study ends with exactly one read."""
    stack = make_stack(request, tmp_path, mode, demo_models_dir, job_lease_seconds=3)
    stacks.append(stack)
    first = stack.start_worker(name="victim")
    study_uid = stack.store(real_chest_radiograph())
    study_id = wait_for(lambda: stack.study_id(study_uid), 10, "the study row")

    # The first task of a fresh worker loads torch, monai and the models (seconds) after it has
    # claimed the job: poll tightly and kill while the job is RUNNING and has no read yet.
    def running() -> bool:
        job = stack.job(study_id)
        return job is not None and job.status == JobStatus.RUNNING

    wait_for(running, ANALYSIS_TIMEOUT_S, "the job to be claimed", interval=0.005)
    first.kill()
    assert stack.read_count(study_id) == 0, "the kill landed after the analysis; the test proves nothing"
    job = stack.job(study_id)
    assert job is not None and job.status == JobStatus.RUNNING and job.attempts == 1

    stack.start_worker(name="restarted")
    wait_done(stack, study_uid)
    assert stack.read_count(study_id) == 1
    job = stack.job(study_id)
    assert job is not None and job.attempts >= 2
    with unit_of_work(stack.session_factory) as session:
        jobs = session.scalars(select(AnalysisJob)).all()
        assert len(jobs) == 1


def test_prefork_pool_and_separate_relay(
    request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path, stacks: list[Stack]
) -> None:
    """Scaled layout on one machine: a relay-only process and a prefork worker (2 processes that
    each load the models once) without a relay of its own; both stop cleanly on SIGTERM."""
    stack = make_stack(request, tmp_path, "embedded", demo_models_dir)
    stacks.append(stack)
    relay = stack.start_worker("--relay-only", name="relay")
    worker = stack.start_worker("--no-relay", "-P", "prefork", "-c", "2", name="prefork")
    studies = [stack.store(phantom_radiograph(seed=20 + i)) for i in range(3)]
    for study_uid in studies:
        assert_one_good_read(stack, wait_done(stack, study_uid))
    assert worker.log().count("model registry loaded") <= 2
    assert worker.terminate() == 0, worker.log()[-3000:]
    assert relay.terminate() == 0, relay.log()[-3000:]
