"""Result deliveries over HTTP, for admins: list them with their attempts, replay a study.

``GET /api/admin/dicom/deliveries``, ``GET /api/admin/dicom/build-failures`` (reads whose result
objects could not be built, and why) and ``POST /api/admin/dicom/studies/{uid}/resend``; the same
as ``clinic dicom deliveries``, ``clinic dicom build-failures`` and ``clinic dicom resend``
(DESIGN.md §4 rule 4: failures are visible and replayable). A replay writes an audit row in the
request's unit of work.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from clinic.audit import service as audit
from clinic.auth.deps import require_roles
from clinic.auth.models import Role, User
from clinic.results import service
from clinic.results.models import DeliveryStatus
from clinic.results.schemas import BuildFailureOut, DeliveryOut, ResendOut
from clinic.web.deps import ClientDep, SessionDep, SettingsDep

router = APIRouter(prefix="/api/admin/dicom", tags=["dicom-admin"])

AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]


@router.get("/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    session: SessionDep,
    _admin: AdminUser,
    status_: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    study_uid: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[DeliveryOut]:
    """Deliveries of result objects, newest first, each with its attempts."""
    views = service.list_deliveries(session, status=status_, study_uid=study_uid, limit=limit)
    return [DeliveryOut.model_validate(v) for v in views]


@router.get("/build-failures", response_model=list[BuildFailureOut])
def list_build_failures(
    session: SessionDep,
    _admin: AdminUser,
    study_uid: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[BuildFailureOut]:
    """AI reads whose result objects could not be built, the latest failure first, with the
    reason; ``POST /studies/{uid}/resend`` builds them again."""
    views = service.list_build_failures(session, study_uid=study_uid, limit=limit)
    return [BuildFailureOut.model_validate(v) for v in views]


@router.post("/studies/{study_uid}/resend", response_model=ResendOut)
def resend_study(
    study_uid: str,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminUser,
    client: ClientDep,
    include_sent: bool = False,
) -> ResendOut:
    """Deliver every result object of the study again to every current destination."""
    try:
        replay = service.replay_study(session, settings, study_uid, include_sent=include_sent)
    except service.UnknownStudyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    audit.record(
        session,
        username=admin.username,
        role=str(admin.role),
        action="resend",
        resource_type="study-results",
        resource_id=study_uid,
        client=client,
        detail=f"deliveries {replay.deliveries}, rebuilt reads {replay.rebuilt_reads}",
    )
    return ResendOut(study_uid=study_uid, deliveries=replay.deliveries, rebuilt_reads=replay.rebuilt_reads)
