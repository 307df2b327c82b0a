"""Templates, static files and where each role lands after signing in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from clinic.ai.models import SYNTHETIC_DISCLAIMER
from clinic.auth.models import Role
from clinic.patients.service import display_name

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters["person_name"] = display_name

#: Each role's first page. Admins integrate and operate; they do not read images (the radiology
#: pages are for radiologists only). Roles without a page yet land on ``/``.
ROLE_HOMES: dict[Role, str] = {Role.RADIOLOGIST: "/radiology"}


def home_for(role: Role | str) -> str:
    return ROLE_HOMES.get(Role(role), "/")


def safe_next(target: str | None) -> str | None:
    """A local path to go back to after login, or ``None`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    ctx: dict[str, Any] = {
        "user": getattr(request.state, "user", None),
        "synthetic_disclaimer": SYNTHETIC_DISCLAIMER,
    }
    ctx.update(context or {})
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code)
    # Pages show patient data: never keep them in shared caches or on disk.
    response.headers["Cache-Control"] = "no-store"
    return response
