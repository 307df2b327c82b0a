"""The HL7 v2 message store over HTTP, for admins (DESIGN.md §4 rule 4: failures visible and
replayable): ``GET /api/admin/hl7/messages?status=failed`` and
``POST /api/admin/hl7/messages/{id}/replay``.

Message content never leaves through this API (it holds patient data): metadata, status, reason.
A replay writes an audit row in the request's unit of work.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from clinic.audit import service as audit
from clinic.auth.deps import require_roles
from clinic.auth.models import Role, User
from clinic.messages import service
from clinic.messages.models import HL7Message, MessageStatus
from clinic.messages.schemas import HL7MessageList, HL7MessageOut
from clinic.web.deps import ClientDep, SessionDep

router = APIRouter(prefix="/api/admin/hl7", tags=["hl7-admin"])

AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]


def message_out(message: HL7Message) -> HL7MessageOut:
    return HL7MessageOut(
        id=message.id,
        received_at=message.received_at,
        sending_application=message.sending_application,
        sending_facility=message.sending_facility,
        control_id=message.control_id,
        message_type=message.message_type,
        version=message.version,
        charset=message.charset,
        peer=message.peer,
        status=str(message.status),
        ack_code=message.ack_code,
        error=message.error,
        notes=message.notes,
        attempts=message.attempts,
        processed_at=message.processed_at,
        size=len(message.raw),
    )


@router.get("/messages", response_model=HL7MessageList)
def list_messages(
    session: SessionDep,
    _admin: AdminUser,
    status_: Annotated[MessageStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1)] = None,
) -> HL7MessageList:
    """Stored messages, newest first, optionally of one status (received, processed, failed,
    rejected)."""
    rows = service.list_messages(session, status_, limit=limit, before_id=before_id)
    return HL7MessageList(
        messages=[message_out(m) for m in rows],
        next_before_id=rows[-1].id if len(rows) == limit else None,
        counts=service.status_counts(session),
    )


@router.get("/messages/{message_id}", response_model=HL7MessageOut)
def get_message(message_id: int, session: SessionDep, _admin: AdminUser) -> HL7MessageOut:
    try:
        return message_out(service.get_message(session, message_id))
    except service.MessageNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.post("/messages/{message_id}/replay", response_model=HL7MessageOut)
def replay_message(
    message_id: int, session: SessionDep, admin: AdminUser, client: ClientDep
) -> HL7MessageOut:
    """Put a failed message back in line: the processor takes it again (404 unknown, 409 when it
    is not failed)."""
    try:
        message = service.replay(session, message_id)
    except service.MessageNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except service.ReplayNotAllowedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    audit.record(
        session,
        username=admin.username,
        role=str(admin.role),
        action="replay",
        resource_type="hl7-message",
        resource_id=str(message_id),
        client=client,
    )
    return message_out(message)
