"""Wire shapes of the radiology API, built from the service's values."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from clinic.imaging.priors import PriorInfo
from clinic.radiology.service import FindingView, ReadView, SeriesView, StudyDetail, WorklistRow


def heatmap_url(finding_id: int) -> str:
    return f"/api/ai/findings/{finding_id}/heatmap"


def rendered_url(instance_id: int) -> str:
    return f"/api/imaging/instances/{instance_id}/rendered"


class FindingOut(BaseModel):
    id: int
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
    disclaimer: str
    heatmap_url: str | None

    @classmethod
    def from_view(cls, f: FindingView) -> FindingOut:
        return cls(
            id=f.finding_id,
            read_id=f.read_id,
            code=f.code,
            label=f.label,
            probability=f.probability,
            threshold=f.threshold,
            positive=f.positive,
            urgency=f.urgency,
            model_id=f.model_id,
            model_name=f.model_name,
            model_version=f.model_version,
            is_synthetic=f.is_synthetic,
            disclaimer=f.disclaimer,
            heatmap_url=heatmap_url(f.finding_id) if f.has_heatmap else None,
        )


class WorklistRowOut(BaseModel):
    study_id: int
    study_uid: str
    accession_number: str
    patient_identifier: str
    patient_name: str
    arrived_at: dt.datetime
    modality: str
    body_part: str
    description: str
    status: str
    priority: str
    priority_level: int
    priority_reason: str
    waiting_minutes: float
    url: str
    findings: list[FindingOut]

    @classmethod
    def from_row(cls, row: WorklistRow) -> WorklistRowOut:
        return cls(
            study_id=row.study_id,
            study_uid=row.study_uid,
            accession_number=row.accession_number,
            patient_identifier=row.patient_identifier,
            patient_name=row.patient_name,
            arrived_at=row.arrived_at,
            modality=row.modality,
            body_part=row.body_part,
            description=row.description,
            status=str(row.status),
            priority=row.priority.name,
            priority_level=int(row.priority),
            priority_reason=row.priority_reason,
            waiting_minutes=round(row.waiting_minutes, 1),
            url=f"/radiology/studies/{row.study_id}",
            findings=[FindingOut.from_view(f) for f in row.findings],
        )


class WorklistOut(BaseModel):
    generated_at: dt.datetime
    max_wait_minutes: float
    rows: list[WorklistRowOut]


class InstanceOut(BaseModel):
    id: int
    sop_instance_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    rendered_url: str


class SeriesOut(BaseModel):
    id: int
    series_uid: str
    modality: str
    body_part: str
    view_position: str
    series_number: int | None
    description: str
    instances: list[InstanceOut]

    @classmethod
    def from_view(cls, s: SeriesView) -> SeriesOut:
        return cls(
            id=s.series_id,
            series_uid=s.series_uid,
            modality=s.modality,
            body_part=s.body_part,
            view_position=s.view_position,
            series_number=s.series_number,
            description=s.description,
            instances=[
                InstanceOut(
                    id=i.instance_id,
                    sop_instance_uid=i.sop_instance_uid,
                    instance_number=i.instance_number,
                    rows=i.rows,
                    columns=i.columns,
                    rendered_url=rendered_url(i.instance_id),
                )
                for i in s.instances
            ],
        )


class ReadOut(BaseModel):
    id: int
    model_id: str
    model_name: str
    model_version: str
    is_synthetic: bool
    disclaimer: str
    sop_instance_uid: str
    device: str
    inference_ms: float
    created_at: dt.datetime
    findings: list[FindingOut]
    #: Why the read's result objects (SR, SEG for the PACS) could not be built; empty when they were.
    results_error: str = ""

    @classmethod
    def from_view(cls, r: ReadView) -> ReadOut:
        return cls(
            id=r.read_id,
            model_id=r.model_id,
            model_name=r.model_name,
            model_version=r.model_version,
            is_synthetic=r.is_synthetic,
            disclaimer=r.disclaimer,
            sop_instance_uid=r.sop_instance_uid,
            device=r.device,
            inference_ms=r.inference_ms,
            created_at=r.created_at,
            findings=[FindingOut.from_view(f) for f in r.findings],
            results_error=r.results_error,
        )


class PriorOut(BaseModel):
    """A previous study fetched from a PACS for comparison, or the report of a failed query."""

    id: int
    prior_study_uid: str
    study_date: dt.date | None
    modality: str
    description: str
    #: pending, fetched or failed (clinic.imaging.models.PriorStatus)
    status: str
    error: str
    source_ae: str
    fetched_at: dt.datetime | None
    #: True for the row that says a PACS could not be queried (no prior study behind it).
    is_query_report: bool
    study_id: int | None
    #: The prior's own page, once it is fetched.
    url: str | None

    @classmethod
    def from_info(cls, p: PriorInfo) -> PriorOut:
        linked = p.prior_study_id if p.status == "fetched" else None
        return cls(
            id=p.prior_id,
            prior_study_uid=p.prior_study_uid,
            study_date=p.study_date,
            modality=p.modality,
            description=p.description,
            status=str(p.status),
            error=p.error,
            source_ae=p.source_ae,
            fetched_at=p.fetched_at,
            is_query_report=p.is_query_report,
            study_id=linked,
            url=f"/radiology/studies/{linked}" if linked is not None else None,
        )


class StudyOut(BaseModel):
    study: WorklistRowOut
    display_instance_id: int | None
    series: list[SeriesOut]
    reads: list[ReadOut]
    #: True when this study was fetched as a prior of another one (not a work item).
    is_prior: bool = False
    priors: list[PriorOut] = []

    @classmethod
    def from_detail(cls, d: StudyDetail) -> StudyOut:
        shown = d.display_instance()
        return cls(
            study=WorklistRowOut.from_row(d.row),
            display_instance_id=shown.instance_id if shown else None,
            series=[SeriesOut.from_view(s) for s in d.series],
            reads=[ReadOut.from_view(r) for r in d.reads],
            is_prior=d.is_prior,
            priors=[PriorOut.from_info(p) for p in d.priors],
        )
