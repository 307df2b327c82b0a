"""ServiceRequest: an imaging order (HL7 ORM^O01 / OMI^O23, ``clinic.orders``) as FHIR R4
ServiceRequest: intent ``order``, the procedure code, priority, reason, requester, the placer
order number (type PLAC) and the accession number (type ACSN, v2-0203)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.orders.models import ImagingOrder
from clinic.radiology.priority import Priority
from integrations.fhir.domain.base import ProjectedProvider, compact, instant, outdated, reference
from integrations.fhir.domain.observation import SOURCE_SYSTEMS
from integrations.fhir.domain.patient import V2_0203

PRIORITIES = {Priority.ROUTINE: "routine", Priority.URGENT: "urgent", Priority.STAT: "stat"}


def _identifier(code: str, system: str, value: str) -> dict[str, Any] | None:
    if not value:
        return None
    return compact(
        {"type": {"coding": [{"system": V2_0203, "code": code}]}, "system": system, "value": value}
    )


def _reason(row: ImagingOrder) -> dict[str, Any] | None:
    coding = [{"code": row.reason_code}] if row.reason_code else []
    return compact({"coding": coding, "text": row.reason_for_exam}) or None


def service_request_body(row: ImagingOrder) -> dict[str, Any]:
    identifiers = [
        _identifier("PLAC", row.placer_issuer, row.placer_order_number),
        _identifier("FILL", "", row.filler_order_number),
        _identifier("ACSN", "", row.accession_number),
    ]
    system = SOURCE_SYSTEMS.get(row.procedure_system.upper(), row.procedure_system)
    coding = [compact({"system": system, "code": row.procedure_code, "display": row.procedure_text})]
    return compact(
        {
            "identifier": [i for i in identifiers if i],
            "status": str(row.status),
            "intent": "order",
            "category": [
                {"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}
            ],
            "priority": PRIORITIES[Priority.clamp(row.priority)],
            "code": compact({"coding": coding if row.procedure_code else [], "text": row.procedure_text}),
            "subject": reference("Patient", row.patient_id),
            "authoredOn": instant(row.ordered_at),
            "requester": compact({"display": row.ordering_provider_name}) or None,
            "reasonCode": [reason] if (reason := _reason(row)) else [],
            "note": [{"text": f"modality {row.modality}"}] if row.modality else [],
        }
    )


class ServiceRequestProvider(ProjectedProvider):
    def __init__(self) -> None:
        super().__init__("ServiceRequest")

    def pending(
        self, session: Session, since: dt.datetime | None = None, limit: int | None = None, after: int = 0
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        query = outdated(
            select(ImagingOrder),
            ImagingOrder.id,
            [ImagingOrder.updated_at],
            "ServiceRequest",
            since,
            limit,
            after,
        )
        return [(str(r.id), service_request_body(r)) for r in session.scalars(query)]
