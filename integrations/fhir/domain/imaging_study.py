"""ImagingStudy: a study the DICOM SCP indexed (``clinic.imaging``) as FHIR R4 ImagingStudy:
identifier ``urn:oid:`` + Study Instance UID (R4 imagingstudy.html notes), series with their DCM
modality coding, instances with SOP class and UID, the DICOMweb endpoint, and ``basedOn`` the
imaging orders linked to it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from clinic.imaging.models import ReceiveStatus, Series, Study
from clinic.orders.models import ImagingOrder
from integrations.fhir.domain.base import DICOM_UID, ProjectedProvider, compact, instant, outdated, reference

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def study_body(study: Study, order_ids: list[int]) -> dict[str, Any]:
    series = []
    for s in study.series:
        instances = [
            compact(
                {
                    "uid": i.sop_instance_uid,
                    "sopClass": {"system": DICOM_UID, "code": f"urn:oid:{i.sop_class_uid}"},
                    "number": i.instance_number,
                }
            )
            for i in s.instances
        ]
        series.append(
            compact(
                {
                    "uid": s.series_uid,
                    "number": s.series_number,
                    "modality": {"system": DCM, "code": s.modality or "OT"},
                    "description": s.description,
                    "numberOfInstances": len(instances),
                    "bodySite": {"display": s.body_part} if s.body_part else None,
                    "instance": instances,
                }
            )
        )
    return compact(
        {
            "identifier": [
                {"system": DICOM_UID, "value": f"urn:oid:{study.study_uid}"},
                *(
                    [
                        {
                            "type": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                        "code": "ACSN",
                                    }
                                ]
                            },
                            "value": study.accession_number,
                        }
                    ]
                    if study.accession_number
                    else []
                ),
            ],
            "status": "available" if study.status == ReceiveStatus.COMPLETE else "registered",
            "subject": reference("Patient", study.patient_id),
            "basedOn": [reference("ServiceRequest", o) for o in order_ids],
            "started": study.study_date.isoformat() if study.study_date else instant(study.received_at),
            "numberOfSeries": len(series),
            "numberOfInstances": sum(s.get("numberOfInstances", 0) for s in series),
            "description": study.description,
            "series": series,
        }
    )


class ImagingStudyProvider(ProjectedProvider):
    def __init__(self) -> None:
        super().__init__("ImagingStudy")

    def pending(
        self, session: Session, since: dt.datetime | None = None, limit: int | None = None, after: int = 0
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        changed = [Study.last_received_at, Study.completed_at]
        query = outdated(select(Study), Study.id, changed, "ImagingStudy", since, limit, after).options(
            selectinload(Study.series).selectinload(Series.instances)
        )
        studies = list(session.scalars(query).unique())
        if not studies:
            return []
        orders: dict[int, list[int]] = {}
        for order_id, study_id in session.execute(
            select(ImagingOrder.id, ImagingOrder.study_id).where(
                ImagingOrder.study_id.in_([s.id for s in studies])
            )
        ):
            if study_id is not None:
                orders.setdefault(study_id, []).append(order_id)
        return [(str(s.id), study_body(s, orders.get(s.id, []))) for s in studies]
