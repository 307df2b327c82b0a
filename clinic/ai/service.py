"""Analysis jobs and AI reads.

A job is created (with its outbox message) in the transaction that completes a study. A worker
claims it with a lease; if the worker dies, the relay hands the job out again when the lease runs
out. Reads are unique per (study, model id, model version), so a redelivered task never adds a
second read (DESIGN.md §4 rule 3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.ai.models import AIFinding, AIMeasurement, AIRead, AnalysisJob, JobStatus
from clinic.db import utcnow
from clinic.imaging.models import Study
from clinic.outbox import service as outbox
from clinic.outbox.models import OutboxMessage

#: Celery task name of the analysis task (the worker defines it under this name).
ANALYSE_STUDY_TASK = "clinic.analyse_study"


def request_analysis(session: Session, study: Study, queue: str, priority: int = 0) -> AnalysisJob:
    """Create (or re-open) the study's analysis job and its outbox message, in the caller's unit."""
    job = session.scalars(select(AnalysisJob).where(AnalysisJob.study_id == study.id)).one_or_none()
    if job is None:
        job = AnalysisJob(study_id=study.id, priority=priority)
        session.add(job)
        session.flush()
    elif job.status == JobStatus.RUNNING:
        return job  # the running attempt (or its lease expiry) covers it
    else:
        job.status = JobStatus.PENDING
        job.created_at = utcnow()
        job.error = ""
    if priority > job.priority:
        job.priority = priority
    _hand_out(session, job, queue)
    return job


def _hand_out(session: Session, job: AnalysisJob, queue: str) -> None:
    message = outbox.enqueue(session, ANALYSE_STUDY_TASK, queue, {"job_id": job.id}, priority=job.priority)
    session.flush()
    job.outbox_message_id = message.id


def claim_job(session: Session, job_id: int, lease: dt.timedelta) -> AnalysisJob | None:
    """Take the job for this worker, or ``None`` if it is done or another worker holds its lease."""
    job = session.scalars(select(AnalysisJob).where(AnalysisJob.id == job_id).with_for_update()).one_or_none()
    if job is None or job.status in (JobStatus.DONE, JobStatus.FAILED):
        return None
    now = utcnow()
    if job.status == JobStatus.RUNNING and job.lease_expires_at and job.lease_expires_at > now:
        return None
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.started_at = now
    job.lease_expires_at = now + lease
    return job


def finish_job(session: Session, job_id: int) -> None:
    job = session.get(AnalysisJob, job_id)
    if job is not None:
        job.status = JobStatus.DONE
        job.finished_at = utcnow()
        job.lease_expires_at = None


def fail_job(session: Session, job_id: int, reason: str) -> None:
    """A permanent failure: visible, with its reason, and replayable."""
    job = session.get(AnalysisJob, job_id)
    if job is not None:
        job.status = JobStatus.FAILED
        job.finished_at = utcnow()
        job.lease_expires_at = None
        job.error = reason[:4000]


def requeue_expired(session: Session, queue: str, now: dt.datetime | None = None) -> list[int]:
    """Hand out again the jobs whose worker died (lease expired while running)."""
    now = now or utcnow()
    jobs = session.scalars(
        select(AnalysisJob)
        .where(AnalysisJob.status == JobStatus.RUNNING, AnalysisJob.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    for job in jobs:
        job.status = JobStatus.PENDING
        job.lease_expires_at = None
        _hand_out(session, job, queue)
    return [job.id for job in jobs]


def requeue_stale_pending(
    session: Session, queue: str, older_than: dt.timedelta, now: dt.datetime | None = None
) -> list[int]:
    """Hand out again pending jobs whose message was published long ago and never taken.

    A broker that keeps nothing on disk (Redis without persistence) can lose a published message;
    a job must not wait for ever because of it. Only jobs whose message *was* published count: an
    unpublished one is still the relay's to deliver (e.g. while the broker is down). A duplicate
    delivery is harmless: claiming and reads are idempotent.
    """
    now = now or utcnow()
    jobs = session.scalars(
        select(AnalysisJob)
        .join(OutboxMessage, OutboxMessage.id == AnalysisJob.outbox_message_id)
        .where(
            AnalysisJob.status == JobStatus.PENDING,
            OutboxMessage.published_at.is_not(None),
            OutboxMessage.published_at < now - older_than,
        )
        .with_for_update(of=AnalysisJob, skip_locked=True)
    ).all()
    for job in jobs:
        _hand_out(session, job, queue)
    return [job.id for job in jobs]


def failed_jobs(session: Session) -> Sequence[AnalysisJob]:
    return session.scalars(
        select(AnalysisJob).where(AnalysisJob.status == JobStatus.FAILED).order_by(AnalysisJob.id)
    ).all()


@dataclass(frozen=True)
class FindingIn:
    code: str
    label: str
    probability: float
    threshold: float
    urgency: int = 0
    heatmap_path: str = ""

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class MeasurementIn:
    """A number a model measured; ``unit`` is UCUM (``{count}``, ``mm``, ``mm3``)."""

    code: str
    label: str
    value: float
    unit: str
    finding_code: str = ""


@dataclass(frozen=True)
class ReadIn:
    """A model's result, as the domain stores it (the worker converts the inference result).

    ``mask_path`` (a segmentation model's label map, relative to the data dir) and
    ``measurements`` come from 3D models; ``series_uid`` is the series the model read.
    """

    model_id: str
    model_name: str
    model_version: str
    sop_instance_uid: str
    is_synthetic: bool
    disclaimer: str = ""
    device: str = "cpu"
    inference_ms: float = 0.0
    findings: tuple[FindingIn, ...] = field(default_factory=tuple)
    series_uid: str = ""
    mask_path: str = ""
    measurements: tuple[MeasurementIn, ...] = field(default_factory=tuple)


def find_read(session: Session, study_id: int, model_id: str, model_version: str) -> AIRead | None:
    return session.scalars(
        select(AIRead).where(
            AIRead.study_id == study_id,
            AIRead.model_id == model_id,
            AIRead.model_version == model_version,
        )
    ).one_or_none()


def record_read(session: Session, study_id: int, job_id: int | None, read_in: ReadIn) -> AIRead:
    """Store a read once; a second call for the same study/model/version returns the first."""
    existing = find_read(session, study_id, read_in.model_id, read_in.model_version)
    if existing is not None:
        return existing
    read = AIRead(
        study_id=study_id,
        job_id=job_id,
        model_id=read_in.model_id,
        model_name=read_in.model_name,
        model_version=read_in.model_version,
        is_synthetic=read_in.is_synthetic,
        disclaimer=read_in.disclaimer,
        sop_instance_uid=read_in.sop_instance_uid,
        series_uid=read_in.series_uid,
        mask_path=read_in.mask_path,
        device=read_in.device,
        inference_ms=read_in.inference_ms,
        findings=[
            AIFinding(
                code=f.code,
                label=f.label,
                probability=f.probability,
                threshold=f.threshold,
                positive=f.positive,
                urgency=f.urgency if f.positive else 0,
                heatmap_path=f.heatmap_path,
            )
            for f in read_in.findings
        ],
        measurements=[
            AIMeasurement(code=m.code, label=m.label, value=m.value, unit=m.unit, finding_code=m.finding_code)
            for m in read_in.measurements
        ],
    )
    try:
        with session.begin_nested():
            session.add(read)
            session.flush()
    except IntegrityError:  # a redelivered task raced us; the unique key keeps one read
        existing = find_read(session, study_id, read_in.model_id, read_in.model_version)
        assert existing is not None
        return existing
    return read


def reads_for_study(session: Session, study_id: int) -> Sequence[AIRead]:
    return session.scalars(
        select(AIRead).where(AIRead.study_id == study_id).order_by(AIRead.created_at)
    ).all()
