"""Remote DICOM AEs over HTTP, for admins: ``/api/admin/dicom/aes`` (list, add, change, remove).

Every change writes an audit row in the request's unit of work, so the change and its record
commit together. The SCP's allow-list reads the table through a short cache
(``integrations.dicom.allowlist``): a new AE may store within seconds, without a restart.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status

from clinic.auth.deps import require_roles
from clinic.auth.models import Role, User
from clinic.network import service
from clinic.network.schemas import AECreate, AEOut, AEUpdate
from clinic.web.deps import ClientDep, SessionDep

router = APIRouter(prefix="/api/admin/dicom", tags=["dicom-admin"])

AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]


def http_error(exc: service.NetworkError) -> HTTPException:
    """The one mapping of the slice's errors to HTTP answers."""
    if isinstance(exc, service.UnknownAEError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, service.AEExistsError):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _audit(session: SessionDep, user: User, client: str, action: str, title: str, detail: str) -> None:
    service.audit_change(
        session,
        username=user.username,
        role=str(user.role),
        action=action,
        ae_title=title,
        detail=detail,
        client=client,
    )


@router.get("/aes", response_model=list[AEOut])
def list_aes(session: SessionDep, _admin: AdminUser) -> list[AEOut]:
    """Every configured remote AE, by title."""
    return [AEOut.model_validate(ae) for ae in service.list_aes(session)]


@router.post("/aes", response_model=AEOut, status_code=status.HTTP_201_CREATED)
def add_ae(body: AECreate, session: SessionDep, admin: AdminUser, client: ClientDep) -> AEOut:
    """Add a remote AE (409 when the title is taken, 422 when a value is invalid)."""
    ae_in = service.AEIn(**body.model_dump())
    try:
        ae = service.add_ae(session, ae_in)
    except service.NetworkError as exc:
        raise http_error(exc) from exc
    _audit(session, admin, client, "create", ae.ae_title, service.describe_changes(None, ae_in))
    return AEOut.model_validate(ae)


@router.put("/aes/{title}", response_model=AEOut)
def update_ae(title: str, body: AEUpdate, session: SessionDep, admin: AdminUser, client: ClientDep) -> AEOut:
    """Change the fields given in the body; the others keep their values."""
    try:
        ae = service.get_ae(session, title)
        before = service.to_ae_in(ae)
        after = service.with_changes(ae, **body.model_dump(exclude_unset=True))
        ae = service.update_ae(session, title, after)
    except service.NetworkError as exc:
        raise http_error(exc) from exc
    _audit(session, admin, client, "update", ae.ae_title, service.describe_changes(before, after))
    return AEOut.model_validate(ae)


@router.delete("/aes/{title}", status_code=status.HTTP_204_NO_CONTENT)
def remove_ae(title: str, session: SessionDep, admin: AdminUser, client: ClientDep) -> Response:
    """Remove the AE (disabled instead when deliveries refer to it: their history stays)."""
    try:
        before = service.to_ae_in(service.get_ae(session, title))
        service.remove_ae(session, title)
    except service.NetworkError as exc:
        raise http_error(exc) from exc
    _audit(session, admin, client, "delete", before.ae_title, service.describe_changes(before, None))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
