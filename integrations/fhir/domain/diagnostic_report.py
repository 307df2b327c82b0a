"""DiagnosticReport: an AI read (``clinic.ai``) as FHIR R4 DiagnosticReport.

Status ``preliminary``: the read is a model's output that no radiologist has verified yet
(R4 valueset-diagnostic-report-status: "verified early results ... not all results are final");
a signed read is the radiologist's report, not this one. Category RAD (v2-0074), code LOINC
18748-4 "Diagnostic imaging study", ``imagingStudy`` the study it read. Each finding is a contained
Observation (probability as a Quantity with UCUM unit ``1``, interpretation POS/NEG at the model's
operating threshold, ``method`` the model name and version, ``device`` the contained model Device);
measurements are contained Observations in their UCUM unit. ``conclusion`` names the model and
carries the synthetic-model disclaimer where one applies. Read-only: writes go to the generic
store under uuid ids (radiologist-authored reports).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from clinic.ai.models import AIRead
from clinic.imaging.models import Study
from integrations.fhir.domain.base import (
    LOINC,
    UCUM,
    ProjectedProvider,
    compact,
    instant,
    outdated,
    reference,
)

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FINDING_SYSTEM = "urn:clinic:ai:finding"
MEASUREMENT_SYSTEM = "urn:clinic:ai:measurement"


def _model(read: AIRead) -> str:
    return f"{read.model_name} {read.model_version}"


def _contained(read: AIRead, study: Study) -> list[dict[str, Any]]:
    subject = reference("Patient", study.patient_id)
    device = {
        "resourceType": "Device",
        "id": "model",
        "deviceName": [{"name": read.model_name, "type": "model-name"}],
        "version": [{"value": read.model_version}],
    }
    common = {
        "resourceType": "Observation",
        "status": "preliminary",
        "subject": subject,
        "device": {"reference": "#model", "display": _model(read)},
        "method": {"text": _model(read)},
    }
    findings = [
        compact(
            {
                **common,
                "id": f"f{n}",
                "code": {
                    "coding": [{"system": FINDING_SYSTEM, "code": f.code, "display": f.label}],
                    "text": f.label,
                },
                "valueQuantity": {"value": round(f.probability, 6), "unit": "1", "system": UCUM, "code": "1"},
                "interpretation": [
                    {"coding": [{"system": INTERPRETATION, "code": "POS" if f.positive else "NEG"}]}
                ],
                "note": [{"text": f"operating threshold {f.threshold:g}"}],
            }
        )
        for n, f in enumerate(read.findings, 1)
    ]
    measurements = [
        {
            **common,
            "id": f"m{n}",
            "code": {
                "coding": [{"system": MEASUREMENT_SYSTEM, "code": m.code, "display": m.label}],
                "text": m.label,
            },
            "valueQuantity": {"value": m.value, "unit": m.unit, "system": UCUM, "code": m.unit},
        }
        for n, m in enumerate(read.measurements, 1)
    ]
    return [device, *findings, *measurements]


def conclusion(read: AIRead) -> str:
    positive = [f.label for f in read.findings if f.positive]
    text = f"AI read by {_model(read)}, not reviewed by a radiologist: "
    text += (
        ("positive for " + ", ".join(positive)) if positive else "no finding above its operating threshold"
    )
    if read.disclaimer:
        text += f". {read.disclaimer}"
    return text


def report_body(read: AIRead, study: Study) -> dict[str, Any]:
    contained = _contained(read, study)
    return compact(
        {
            "contained": contained,
            "identifier": [
                {
                    "system": "urn:clinic:ai-read",
                    "value": f"{read.model_id}/{read.model_version}/{study.study_uid}",
                }
            ],
            "status": "preliminary",
            "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
            "code": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}]},
            "subject": reference("Patient", study.patient_id),
            "effectiveDateTime": study.study_date.isoformat()
            if study.study_date
            else instant(study.received_at),
            "issued": instant(read.created_at),
            "imagingStudy": [reference("ImagingStudy", study.id)],
            "result": [{"reference": f"#{c['id']}"} for c in contained if c["resourceType"] == "Observation"],
            "conclusion": conclusion(read),
            "extension": [{"url": "urn:clinic:fhir:ai-synthetic", "valueBoolean": bool(read.is_synthetic)}],
        }
    )


class DiagnosticReportProvider(ProjectedProvider):
    def __init__(self) -> None:
        super().__init__("DiagnosticReport")

    def pending(
        self, session: Session, since: dt.datetime | None = None, limit: int | None = None, after: int = 0
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        query = outdated(
            select(AIRead), AIRead.id, [AIRead.created_at], "DiagnosticReport", since, limit, after
        ).options(selectinload(AIRead.findings), selectinload(AIRead.measurements))
        reads = list(session.scalars(query))
        if not reads:
            return []
        studies = {
            s.id: s for s in session.scalars(select(Study).where(Study.id.in_({r.study_id for r in reads})))
        }
        return [(str(r.id), report_body(r, studies[r.study_id])) for r in reads]
