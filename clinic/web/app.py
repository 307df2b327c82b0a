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
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class SecurityHeaders:
    """Security headers on every response, and ``Cache-Control: no-store`` outside ``/static``
    (responses carry patient data: never kept by browsers or shared caches). A plain ASGI
    middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs each request in an
    extra task with memory streams, ~1 ms per request here."""

    HEADERS = (
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.HEADERS:
                    headers.setdefault(name, value)
                if not cacheable:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


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

    app.add_middleware(SecurityHeaders)
    return app
