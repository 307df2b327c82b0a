"""Images for the viewer: a rendered DICOM instance and the heatmap overlay of an AI finding.

Both are patient data: every response is audited (who, role, resource, patient, client) in the
request's unit of work, is sent with ``Cache-Control: no-store``, and is for radiologists only
(see :data:`IMAGE_READERS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import Response
from sqlalchemy import select

from clinic.ai.models import AIFinding, AIRead
from clinic.audit.api import audit_read
from clinic.auth.deps import require_roles
from clinic.auth.models import Role, User
from clinic.imaging.models import Instance, Series, Study
from clinic.imaging.render import (
    MAX_RENDER_SIZE,
    ImageFormat,
    RenderError,
    Window,
    render_heatmap,
    render_instance,
)
from clinic.settings import Settings
from clinic.web.deps import ClientDep, SessionDep, SettingsDep

router = APIRouter(tags=["imaging"])

#: Who may see images. Admins run the integration and the servers; they do not read images.
IMAGE_READERS = (Role.RADIOLOGIST,)
ImageReader = Annotated[User, Depends(require_roles(*IMAGE_READERS))]

NO_STORE = {"Cache-Control": "no-store"}


def resolve_data_file(settings: Settings, relative: str) -> Path:
    """A stored file's absolute path, refusing anything outside the data dir."""
    root = settings.resolved_data_dir
    path = (root / relative).resolve()
    if not relative or not path.is_relative_to(root):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "file not found")
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "stored file is missing")
    return path


@router.get(
    "/api/imaging/instances/{instance_id}/rendered",
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}},
)
def rendered_instance(
    instance_id: int,
    user: ImageReader,
    session: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
    window_center: float | None = None,
    window_width: Annotated[float | None, Query(ge=1)] = None,
    max_size: Annotated[int, Query(ge=16, le=MAX_RENDER_SIZE)] = 1024,
    format: ImageFormat = ImageFormat.PNG,
) -> Response:
    instance = session.get(Instance, instance_id)
    if instance is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such instance")
    if (window_center is None) != (window_width is None):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give both window_center and window_width")
    try:
        window = Window(window_center, window_width) if window_center is not None and window_width else None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    path = resolve_data_file(settings, instance.file_path)
    try:
        body = render_instance(path, window=window, max_size=max_size, fmt=format)
    except RenderError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    patient_id = session.scalar(
        select(Study.patient_id)
        .join(Series, Series.study_id == Study.id)
        .where(Series.id == instance.series_id)
    )
    audit_read(session, user, client, "instance-image", str(instance.id), patient_id)
    return Response(body, media_type=format.media_type, headers=NO_STORE)


@router.get("/api/ai/findings/{finding_id}/heatmap", responses={200: {"content": {"image/png": {}}}})
def finding_heatmap(
    finding_id: int,
    user: ImageReader,
    session: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> Response:
    finding = session.get(AIFinding, finding_id)
    if finding is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such finding")
    if not finding.heatmap_path:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this finding has no heatmap")
    path = resolve_data_file(settings, finding.heatmap_path)
    try:
        body = render_heatmap(path)
    except RenderError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    read = session.get(AIRead, finding.read_id)
    assert read is not None
    study = session.get(Study, read.study_id)
    assert study is not None
    audit_read(session, user, client, "heatmap", str(finding.id), study.patient_id)
    return Response(body, media_type="image/png", headers=NO_STORE)
