"""The web application: every slice's routes, the pages, static files and the health check.

:func:`create_app` builds the engine once (unless a session factory is given) and keeps it on
``app.state``; requests only open sessions from it (:mod:`clinic.web.deps`). Add a slice by adding
its router to :data:`ROUTERS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

import clinic
from clinic.audit.api import router as audit_router
from clinic.auth.api import router as auth_router
from clinic.auth.deps import CurrentUser
from clinic.db import make_engine, make_session_factory
from clinic.imaging.api import router as imaging_router
from clinic.messages.api import router as hl7_messages_router
from clinic.network.api import router as network_router
from clinic.radiology.api import router as radiology_router
from clinic.results.api import router as results_router
from clinic.settings import Settings
from clinic.web import errors
from clinic.web.templating import ROLE_HOMES, STATIC_DIR, home_for, render

#: Pages use no inline script or style and load nothing from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

ROUTERS: tuple[APIRouter, ...] = (
    auth_router,
    radiology_router,
    imaging_router,
    audit_router,
    hl7_messages_router,
    network_router,
    results_router,
)

_core = APIRouter()


@_core.get("/health", tags=["ops"])
def health(request: Request) -> JSONResponse:
    """Liveness and database reachability; no authentication, no patient data."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
            session.rollback()
        database, code = "ok", status.HTTP_200_OK
    except Exception:  # any driver error means "unreachable" here; details stay in the server log
        database, code = "unreachable", status.HTTP_503_SERVICE_UNAVAILABLE
    body = {
        "status": "ok" if code == 200 else "degraded",
        "database": database,
        "version": clinic.__version__,
    }
    return JSONResponse(body, status_code=code)


@_core.get("/api/openapi.json", include_in_schema=False)
def openapi_schema(request: Request, _user: CurrentUser) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@_core.get("/", include_in_schema=False)
def home(request: Request, user: CurrentUser) -> Response:
    target = home_for(user.role)
    if target != "/":
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    return render(request, "home.html", {"role_homes": ROLE_HOMES})


def create_app(
    settings: Settings,
    session_factory: sessionmaker[Session] | None = None,
    extra_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The ASGI app for *settings*. Without *session_factory*, the engine for
    ``settings.resolved_database_url`` is created here, once, and disposed of at shutdown.

    *extra_routers* are the protocol adapters' routes (DICOMweb, FHIR), handed in by the composition
    root (``clinicctl.webapp``): ``clinic`` never imports ``integrations``."""
    owned_engine: Engine | None = None
    if session_factory is None:
        owned_engine = make_engine(settings.resolved_database_url)
        session_factory = make_session_factory(owned_engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned_engine is not None:
                owned_engine.dispose()

    app = FastAPI(
        title="Smart Clinic",
        version=clinic.__version__,
        lifespan=lifespan,
        # The schema and docs are served behind a login (below), not by FastAPI's open routes.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    errors.install(app)
    app.include_router(_core)
    for router in (*ROUTERS, *extra_routers):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if not request.url.path.startswith("/static/"):
            # Responses carry patient data: never kept by browsers or shared caches.
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
