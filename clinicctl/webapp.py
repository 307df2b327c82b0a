"""The web application with every protocol adapter's routes: the one place that joins them.

``clinic.web.app.create_app`` builds the domain's app; the adapters (``integrations``) bring their
own routers, which only the composition root may import (the layering contract).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from sqlalchemy.orm import Session, sessionmaker

from clinic.settings import Settings
from clinic.web.app import create_app
from integrations.dicom.dicomweb.api import router as dicomweb_router
from integrations.fhir.api import make_router as fhir_router


def adapter_routers() -> list[APIRouter]:
    """Routers of the protocol adapters served next to the domain's API."""
    routers: list[APIRouter] = [dicomweb_router, fhir_router()]
    return routers


def build_app(settings: Settings, session_factory: sessionmaker[Session] | None = None) -> FastAPI:
    """The full HTTP app: domain API and pages plus the adapters' routes."""
    return create_app(settings, session_factory, extra_routers=adapter_routers())
