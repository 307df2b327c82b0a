"""The radiology worklist and the study view, as plain values computed from the session.

:func:`worklist` is a pure function of the database state and ``now``: the web API, the pages and
the ``clinic worklist`` CLI all print the same rows. Priorities follow :mod:`clinic.radiology.priority`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.ai.models import SYNTHETIC_DISCLAIMER, AIRead, AnalysisJob, JobStatus
from clinic.db import utcnow
from clinic.imaging.models import Instance, ReceiveStatus, Series, Study
from clinic.imaging.priors import PriorInfo, list_priors
from clinic.radiology.priority import AIUrgency, Priority, decide_priority
from clinic.settings import Settings


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    ANALYSING = "analysing"
    AI_FAILED = "AI failed"
    AI_READ = "AI read"


@dataclass(frozen=True)
class FindingView:
    finding_id: int
    read_id: int
    code: str
    label: str
    probability: float
    threshold: float
    positive: bool
    urgency: int
    model_id: str
    model_name: str
    model_version: str
    is_synthetic: bool
    #: Shown next to the result; the synthetic-model label when the model was trained here.
    disclaimer: str
    has_heatmap: bool


@dataclass(frozen=True)
class WorklistRow:
    study_id: int
    study_uid: str
    accession_number: str
    #: Internal patient id (for audit records; never shown).
    patient_id: int
    patient_identifier: str
    #: PHI: shown to the radiologist, never logged.
    patient_name: str
    arrived_at: dt.datetime
    modality: str
    body_part: str
    description: str
    status: StudyState
    findings: tuple[FindingView, ...]
    priority: Priority
    priority_reason: str
    waiting_minutes: float

    @property
    def ai_positive(self) -> bool:
        return any(f.positive for f in self.findings)


@dataclass(frozen=True)
class InstanceView:
    instance_id: int
    sop_instance_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    file_path: str


@dataclass(frozen=True)
class SeriesView:
    series_id: int
    series_uid: str
    modality: str
    body_part: str
    view_position: str
    series_number: int | None
    description: str
    instances: tuple[InstanceView, ...]


@dataclass(frozen=True)
class ReadView:
    read_id: int
    model_id: str
    model_name: str
    model_version: str
    is_synthetic: bool
    disclaimer: str
    sop_instance_uid: str
    device: str
    inference_ms: float
    created_at: dt.datetime
    findings: tuple[FindingView, ...]
    #: Why the read's result objects (SR, SEG for the PACS) could not be built; empty when they were.
    results_error: str = ""


@dataclass(frozen=True)
class StudyDetail:
    row: WorklistRow
    series: tuple[SeriesView, ...]
    reads: tuple[ReadView, ...]
    #: The patient's previous studies fetched from a PACS for comparison (clinic.imaging.priors).
    priors: tuple[PriorInfo, ...] = ()
    #: This study is itself such a prior: shown for comparison, never new work.
    is_prior: bool = False

    def display_instance(self) -> InstanceView | None:
        """The instance to show first: the one the AI read, else the first image received.

        Series without pixels to show (our own SR results, SEG, other documents) never are.
        """
        instances = [
            i for s in self.series if s.modality.upper() not in NON_IMAGE_MODALITIES for i in s.instances
        ]
        read_uids = {r.sop_instance_uid for r in self.reads}
        for instance in instances:
            if instance.sop_instance_uid in read_uids:
                return instance
        return instances[0] if instances else None


#: Modalities of series that hold documents or segmentations, not images to view (PS3.3 C.7.3.1.1.1).
NON_IMAGE_MODALITIES = frozenset({"SR", "SEG", "KO", "PR", "DOC", "RTSTRUCT"})


def disclaimer_for(read: AIRead) -> str:
    if read.disclaimer:
        return read.disclaimer
    return SYNTHETIC_DISCLAIMER if read.is_synthetic else ""


def _finding_views(read: AIRead) -> list[FindingView]:
    return [
        FindingView(
            finding_id=f.id,
            read_id=read.id,
            code=f.code,
            label=f.label,
            probability=f.probability,
            threshold=f.threshold,
            positive=f.positive,
            urgency=f.urgency,
            model_id=read.model_id,
            model_name=read.model_name,
            model_version=read.model_version,
            is_synthetic=read.is_synthetic,
            disclaimer=disclaimer_for(read),
            has_heatmap=bool(f.heatmap_path),
        )
        for f in read.findings
    ]


def _state(study: Study, reads: Sequence[AIRead], job_status: str | None) -> StudyState:
    if reads:
        return StudyState.AI_READ
    if job_status in (JobStatus.PENDING, JobStatus.RUNNING):
        return StudyState.ANALYSING
    if job_status == JobStatus.FAILED:
        return StudyState.AI_FAILED
    if study.status == ReceiveStatus.COMPLETE:
        return StudyState.COMPLETE
    return StudyState.RECEIVING


def _joined(values: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(v for v in values if v))


def _row(
    study: Study,
    series: Sequence[Series],
    reads: Sequence[AIRead],
    job_status: str | None,
    settings: Settings,
    now: dt.datetime,
) -> WorklistRow:
    findings = tuple(view for read in reads for view in _finding_views(read))
    decision = decide_priority(
        order_priority=study.order_priority,
        ai_urgencies=[AIUrgency(f.label, f.urgency) for f in findings if f.positive],
        received_at=study.received_at,
        now=now,
        max_wait_minutes=settings.worklist_max_wait_minutes,
    )
    return WorklistRow(
        study_id=study.id,
        study_uid=study.study_uid,
        accession_number=study.accession_number,
        patient_id=study.patient_id,
        patient_identifier=study.patient.identifier,
        patient_name=study.patient.name,
        arrived_at=study.received_at,
        modality=_joined(s.modality for s in series),
        body_part=_joined(s.body_part for s in series),
        description=study.description or _joined(s.description for s in series),
        status=_state(study, reads, job_status),
        findings=findings,
        priority=decision.priority,
        priority_reason=decision.reason,
        waiting_minutes=decision.waiting_minutes,
    )


def sort_key(row: WorklistRow) -> tuple[int, dt.datetime, int]:
    """Highest priority first, then longest waiting (earliest arrival), then id for stability."""
    return (-int(row.priority), row.arrived_at, row.study_id)


def worklist(session: Session, settings: Settings, now: dt.datetime | None = None) -> list[WorklistRow]:
    """Every study with its AI findings and priority, most urgent first (DESIGN.md §6)."""
    now = now or utcnow()
    # Priors fetched from a PACS for comparison are not new work: they are listed on the page of
    # the study they were fetched for, never as work items of their own.
    studies = session.scalars(select(Study).where(Study.is_prior.is_(False))).all()
    series_by_study: dict[int, list[Series]] = defaultdict(list)
    for series in session.scalars(select(Series).order_by(Series.series_number, Series.id)):
        series_by_study[series.study_id].append(series)
    reads_by_study: dict[int, list[AIRead]] = defaultdict(list)
    for read in session.scalars(select(AIRead).order_by(AIRead.created_at, AIRead.id)):
        reads_by_study[read.study_id].append(read)
    job_status = {sid: st for sid, st in session.execute(select(AnalysisJob.study_id, AnalysisJob.status))}
    rows = [
        _row(
            study,
            series_by_study[study.id],
            reads_by_study[study.id],
            job_status.get(study.id),
            settings,
            now,
        )
        for study in studies
    ]
    rows.sort(key=sort_key)
    return rows


def study_detail(
    session: Session, settings: Settings, study_id: int, now: dt.datetime | None = None
) -> StudyDetail | None:
    """One study with its series, instances and AI reads; ``None`` when there is no such study."""
    study = session.get(Study, study_id)
    if study is None:
        return None
    now = now or utcnow()
    series = session.scalars(
        select(Series).where(Series.study_id == study_id).order_by(Series.series_number, Series.id)
    ).all()
    instances: dict[int, list[Instance]] = defaultdict(list)
    for instance in session.scalars(
        select(Instance)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
        .order_by(Instance.instance_number, Instance.id)
    ):
        instances[instance.series_id].append(instance)
    reads = session.scalars(
        select(AIRead).where(AIRead.study_id == study_id).order_by(AIRead.created_at, AIRead.id)
    ).all()
    job_status = session.scalar(select(AnalysisJob.status).where(AnalysisJob.study_id == study_id))
    row = _row(study, series, reads, job_status, settings, now)
    return StudyDetail(
        row=row,
        series=tuple(
            SeriesView(
                series_id=s.id,
                series_uid=s.series_uid,
                modality=s.modality,
                body_part=s.body_part,
                view_position=s.view_position,
                series_number=s.series_number,
                description=s.description,
                instances=tuple(
                    InstanceView(i.id, i.sop_instance_uid, i.instance_number, i.rows, i.columns, i.file_path)
                    for i in instances[s.id]
                ),
            )
            for s in series
        ),
        reads=tuple(
            ReadView(
                read_id=r.id,
                model_id=r.model_id,
                model_name=r.model_name,
                model_version=r.model_version,
                is_synthetic=r.is_synthetic,
                disclaimer=disclaimer_for(r),
                sop_instance_uid=r.sop_instance_uid,
                device=r.device,
                inference_ms=r.inference_ms,
                created_at=r.created_at,
                findings=tuple(_finding_views(r)),
                results_error=r.results_error,
            )
            for r in reads
        ),
        priors=tuple(list_priors(session, study_id)),
        is_prior=study.is_prior,
    )
