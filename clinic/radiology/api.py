"""Radiology worklist and study view: JSON API and pages.

Radiologists only: the worklist shows patient data and images are read here. Admins run the
integrations and the servers (and may read the audit trail), but do not read studies; the clinic
and ICU roles have their own views. Every response that shows patient data is audited in the
request's unit of work.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import Response

from clinic.audit.api import audit_read
from clinic.auth.deps import require_roles
from clinic.auth.models import Role, User
from clinic.db import utcnow
from clinic.imaging.render import RenderError, Window, auto_window, default_window
from clinic.radiology import service
from clinic.radiology.schemas import StudyOut, WorklistOut, WorklistRowOut
from clinic.settings import Settings
from clinic.web.deps import ClientDep, SessionDep, SettingsDep
from clinic.web.templating import render

router = APIRouter(tags=["radiology"])

RADIOLOGY_ROLES = (Role.RADIOLOGIST,)
Radiologist = Annotated[User, Depends(require_roles(*RADIOLOGY_ROLES))]

#: How often the worklist page refreshes itself (each refresh is an audited read).
WORKLIST_REFRESH_SECONDS = 5


def _worklist_audit_detail(rows: list[service.WorklistRow]) -> str:
    return f"rows={len(rows)}; studies=" + ",".join(str(r.study_id) for r in rows)


def _load_worklist(session: SessionDep, settings: Settings, user: User, client: str) -> WorklistOut:
    now = utcnow()
    rows = service.worklist(session, settings, now=now)
    audit_read(session, user, client, "worklist", detail=_worklist_audit_detail(rows))
    return WorklistOut(
        generated_at=now,
        max_wait_minutes=settings.worklist_max_wait_minutes,
        rows=[WorklistRowOut.from_row(r) for r in rows],
    )


def _load_study(
    session: SessionDep, settings: Settings, user: User, client: str, study_id: int
) -> service.StudyDetail:
    detail = service.study_detail(session, settings, study_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    audit_read(session, user, client, "study", str(study_id), detail.row.patient_id)
    return detail


@router.get("/api/radiology/worklist", response_model=WorklistOut)
def worklist_api(
    user: Radiologist, session: SessionDep, settings: SettingsDep, client: ClientDep
) -> WorklistOut:
    return _load_worklist(session, settings, user, client)


@router.get("/api/radiology/studies/{study_id}", response_model=StudyOut)
def study_api(
    study_id: int, user: Radiologist, session: SessionDep, settings: SettingsDep, client: ClientDep
) -> StudyOut:
    return StudyOut.from_detail(_load_study(session, settings, user, client, study_id))


# --- pages -----------------------------------------------------------------------------------


@router.get("/radiology", include_in_schema=False)
def worklist_page(
    request: Request, user: Radiologist, session: SessionDep, settings: SettingsDep, client: ClientDep
) -> Response:
    data = _load_worklist(session, settings, user, client)
    return render(
        request,
        "radiology/worklist.html",
        {"worklist": data, "refresh_seconds": WORKLIST_REFRESH_SECONDS},
    )


def _windows(settings: Settings, file_path: str) -> dict[str, Window | None]:
    path = (settings.resolved_data_dir / file_path).resolve()
    if not path.is_relative_to(settings.resolved_data_dir) or not path.is_file():
        return {"default": None, "auto": None}
    try:
        return {"default": default_window(path), "auto": auto_window(path)}
    except (RenderError, OSError, ValueError):
        return {"default": None, "auto": None}


@router.get("/radiology/studies/{study_id}", include_in_schema=False)
def study_page(
    study_id: int,
    request: Request,
    user: Radiologist,
    session: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> Response:
    detail = _load_study(session, settings, user, client, study_id)
    study = StudyOut.from_detail(detail)
    shown = detail.display_instance()
    windows = _windows(settings, shown.file_path) if shown else {"default": None, "auto": None}
    viewer: dict[str, Any] = {
        "instanceId": shown.instance_id if shown else None,
        "modality": detail.row.modality,
        "defaultWindow": _window_json(windows["default"]),
        "autoWindow": _window_json(windows["auto"]),
    }
    return render(
        request,
        "radiology/study.html",
        {"study": study, "detail": detail, "viewer": viewer},
    )


def _window_json(window: Window | None) -> dict[str, float] | None:
    return {"center": round(window.center, 2), "width": round(window.width, 2)} if window else None
