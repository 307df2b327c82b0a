"""The audit trail over HTTP: the helper every read of patient data calls, and a listing for admins.

A read and its audit record are written in the same unit of work (the request's): the response
carrying patient data is sent only once both are committed.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.audit import service
from clinic.audit.models import AuditEvent
from clinic.auth.deps import require_roles
from clinic.auth.models import Role, User
from clinic.web.deps import SessionDep

router = APIRouter(tags=["audit"])


def audit_read(
    session: Session,
    user: User,
    client: str,
    resource_type: str,
    resource_id: str = "",
    patient_id: int | None = None,
    detail: str = "",
) -> AuditEvent:
    """Record that *user* read *resource_type*/*resource_id* (of *patient_id*) from *client*."""
    return service.record(
        session,
        username=user.username,
        role=str(user.role),
        action="read",
        resource_type=resource_type,
        resource_id=resource_id,
        patient_id=patient_id,
        client=client,
        detail=detail,
    )


class AuditEventOut(BaseModel):
    id: int
    at: dt.datetime
    username: str
    role: str
    action: str
    resource_type: str
    resource_id: str
    patient_id: int | None
    client: str
    detail: str


@router.get("/api/audit/events", response_model=list[AuditEventOut])
def list_events(
    session: SessionDep,
    _admin: Annotated[User, Depends(require_roles(Role.ADMIN))],
    username: str | None = None,
    patient_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEventOut]:
    """The newest audit events first, optionally for one user or one patient (admins only)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if username:
        query = query.where(AuditEvent.username == username)
    if patient_id is not None:
        query = query.where(AuditEvent.patient_id == patient_id)
    return [AuditEventOut.model_validate(e, from_attributes=True) for e in session.scalars(query)]
