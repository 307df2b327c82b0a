"""Request-scoped dependencies shared by every slice's routes.

The engine and session factory are built once, when the app is created (:func:`clinic.web.app.
create_app`), and kept on ``app.state``; a request only opens a session from the factory. Each
request is one unit of work: it commits once, after the handler returned and before the response
is sent (``scope="function"``), so a read and its audit record are committed together or not at
all, and an exception rolls both back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    with unit_of_work(factory) as session:
        yield session


def client_address(request: Request) -> str:
    """The client's address: the peer's, or, when the peer is a trusted reverse proxy, the one its
    ``X-Forwarded-For`` names (uvicorn's proxy-headers middleware rewrites it before us; it trusts
    127.0.0.1 and ::1, or the addresses in ``FORWARDED_ALLOW_IPS``). Login throttling counts per
    this address, so a proxy on another host must be listed there."""
    return request.client.host if request.client else ""


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ClientDep = Annotated[str, Depends(client_address)]


#: Paths of machine clients (the API, DICOMweb): JSON errors and a 401, never a login redirect.
API_PREFIXES = ("/api/", "/dicomweb/")


def is_api_request(request: Request) -> bool:
    """API callers get JSON errors; everything else is a page and gets HTML or a redirect."""
    return request.url.path.startswith(API_PREFIXES)
