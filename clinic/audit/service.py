"""Recording audit events. Part of the caller's unit of work: the read and its record commit together."""

from __future__ import annotations

from sqlalchemy.orm import Session

from clinic.audit.models import AuditEvent


def record(
    session: Session,
    *,
    username: str,
    role: str,
    action: str,
    resource_type: str,
    resource_id: str = "",
    patient_id: int | None = None,
    client: str = "",
    detail: str = "",
) -> AuditEvent:
    event = AuditEvent(
        username=username,
        role=role,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        patient_id=patient_id,
        client=client,
        detail=detail,
    )
    session.add(event)
    return event
