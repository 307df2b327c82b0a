"""The FHIR R4 REST API under ``/fhir`` (FHIR R4 http.html), JSON only.

Every request is one unit of work: authenticate the bearer token (the platform's login, 401 with
an OperationOutcome without one), check the SMART scope of the role (403), run the interaction,
and record one audit row (resource type and id, the status, never patient data) in the same
transaction; when the interaction fails, its changes are rolled back and the audit row is written
in a transaction of its own. Handlers read the body on the event loop and do the database work in
the thread pool.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from clinic.audit import service as audit
from clinic.auth import service as auth
from clinic.auth.models import Role, User
from clinic.db import unit_of_work
from clinic.settings import Settings
from integrations.fhir import bundle as bundles
from integrations.fhir.capability import capability_statement
from integrations.fhir.domain import domain_registry
from integrations.fhir.interactions import ClaimConflictError, Interactions, WriteResult
from integrations.fhir.outcome import FhirError, Issue, IssueType, bad_request, error, not_found
from integrations.fhir.providers import ProviderRegistry
from integrations.fhir.resources import load_models
from integrations.fhir.responses import (
    Preferences,
    error_response,
    fhir_response,
    history_bundle,
    parse_etag,
    preferences,
    resource_headers,
    searchset,
    written_response,
)
from integrations.fhir.scopes import Access, allows, scope_name
from integrations.fhir.search import DEFAULT_COUNT, MAX_COUNT, date_range, parse_search
from integrations.fhir.validation import parse_json

log = logging.getLogger(__name__)

PREFIX = "/fhir"
#: Attempts of a unit of work that lost a uniqueness race (a transaction Bundle whose conditional
#: create was claimed by an identical one): the retry finds the winner's resource.
UNIT_ATTEMPTS = 3
_IGNORED_PARAMS = frozenset({"_format", "_pretty"})


@dataclass
class AuditNote:
    """What the request's audit row says; the id of a created resource is filled in on the way."""

    action: str
    resource_type: str
    resource_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Call:
    """What an interaction gets: the transaction, the caller, the base URL and the request."""

    session: Session
    user: User
    base: str
    prefs: Preferences
    request: Request
    body: bytes
    note: AuditNote

    @property
    def role(self) -> Role:
        return Role(self.user.role)

    def authorize(self, resource_type: str, access: Access) -> None:
        if not allows(self.role, resource_type, access):
            raise error(
                403,
                IssueType.FORBIDDEN,
                f"scope {scope_name(resource_type, access)} is required",
                resource_type,
            )

    def json(self) -> Any:
        return parse_json(self.body)

    def params(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.request.query_params.multi_items() if k not in _IGNORED_PARAMS]


Work = Callable[[Call], Response]


def _unauthenticated(message: str) -> FhirError:
    return FhirError(401, [Issue(IssueType.LOGIN, message)], {"WWW-Authenticate": 'Bearer realm="fhir"'})


def authenticate(settings: Settings, session: Session, request: Request) -> User:
    """The active user of the bearer token (``clinic.auth`` tokens; the database says whether
    the account is active and what its role is)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthenticated("a bearer token is required")
    try:
        claims = auth.decode_token(settings, token.strip())
    except auth.InvalidTokenError as exc:
        raise _unauthenticated("the token is invalid or expired") from exc
    user = session.get(User, claims.user_id)
    if user is None or not user.active or user.username != claims.username:
        raise _unauthenticated("the token is invalid or expired")
    return user


def _check_format(request: Request) -> None:
    """JSON only: ``_format``/``Accept`` asking for XML → 406, an XML body → 415."""
    wanted = request.query_params.get("_format", "")
    accept = request.headers.get("accept", "")
    if "xml" in wanted or ("xml" in accept and "json" not in accept and "*/*" not in accept):
        raise error(406, IssueType.NOT_SUPPORTED, "only JSON (application/fhir+json) is served")
    if "xml" in request.headers.get("content-type", ""):
        raise error(415, IssueType.NOT_SUPPORTED, "only JSON (application/fhir+json) is accepted")


class FhirApi:
    """The router's handlers over one registry of providers."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self.registry = registry
        self.ix = Interactions(registry)

    # --- the unit of work of one request --------------------------------------------------------

    async def run(
        self, request: Request, note: AuditNote, access: Access | None, work: Work, *, body: bool = False
    ) -> Response:
        raw = await request.body() if body else b""
        return await run_in_threadpool(self._run, request, raw, note, access, work)

    def _run(
        self, request: Request, raw: bytes, note: AuditNote, access: Access | None, work: Work
    ) -> Response:
        factory: sessionmaker[Session] = request.app.state.session_factory
        settings: Settings = request.app.state.settings
        base = str(request.base_url).rstrip("/") + PREFIX
        who: tuple[str, str] = ("anonymous", "")
        for attempt in range(UNIT_ATTEMPTS):
            try:
                _check_format(request)
                with unit_of_work(factory) as session:
                    user = authenticate(settings, session, request)
                    who = (user.username, str(user.role))
                    prefs = preferences(request.headers.get("prefer"))
                    call = Call(session, user, base, prefs, request, raw, note)
                    if note.resource_type and access is not None:
                        if self.registry.get(note.resource_type) is None:
                            raise not_found(f"resource type '{note.resource_type}' is not served here")
                        call.authorize(note.resource_type, access)
                    response = work(call)
                    self._audit(session, request, who, note, response.status_code)
                return response
            except FhirError as exc:
                failure = exc
            except (IntegrityError, ClaimConflictError):
                if attempt + 1 < UNIT_ATTEMPTS:
                    continue
                failure = error(409, IssueType.CONFLICT, "concurrent requests conflicted; retry")
            except Exception as exc:  # noqa: BLE001 - every failure is an OperationOutcome
                # Frames only: an exception's text can carry bound SQL parameters (patient data).
                frames = "".join(traceback.format_tb(exc.__traceback__))
                log.error(
                    "FHIR %s %s failed: %s\n%s", request.method, request.url.path, type(exc).__name__, frames
                )
                failure = error(500, IssueType.EXCEPTION, "internal error; it has been logged")
            break
        with unit_of_work(factory) as session:
            self._audit(session, request, who, note, failure.status)
        return error_response(failure)

    @staticmethod
    def _audit(
        session: Session, request: Request, who: tuple[str, str], note: AuditNote, status: int
    ) -> None:
        detail = f"{request.method} status={status}" + (f" {note.detail}" if note.detail else "")
        audit.record(
            session,
            username=who[0][:64],
            role=who[1],
            action=f"fhir-{note.action}"[:32],
            resource_type=note.resource_type[:64],
            resource_id=note.resource_id[:128],
            client=request.client.host if request.client else "",
            detail=detail,
        )

    # --- interactions ---------------------------------------------------------------------------

    def read(self, call: Call, resource_type: str, logical_id: str) -> Response:
        found = self.ix.read(call.session, resource_type, logical_id)
        headers = resource_headers(call.base, found)
        headers.pop("Location")
        return fhir_response(found.content, 200, headers)

    def vread(self, call: Call, resource_type: str, logical_id: str, version: str) -> Response:
        found = self.ix.vread(call.session, resource_type, logical_id, version)
        headers = resource_headers(call.base, found)
        headers.pop("Location")
        return fhir_response(found.content, 200, headers)

    def _written(self, call: Call, result: WriteResult) -> Response:
        call.note.resource_id = result.resource.logical_id
        return written_response(
            call.base, result.resource, 201 if result.created else 200, call.prefs.returns
        )

    def create(self, call: Call, resource_type: str) -> Response:
        header = call.request.headers.get("if-none-exist")
        condition = None
        if header is not None:
            condition = parse_search(
                resource_type, parse_qsl(header.removeprefix("?"), keep_blank_values=True)
            )
            if not condition.clauses:
                raise bad_request("If-None-Exist needs search criteria")
        result = self.ix.create(call.session, resource_type, call.json(), call.base, condition=condition)
        return self._written(call, result)

    def update(self, call: Call, resource_type: str, logical_id: str) -> Response:
        if_match = parse_etag(call.request.headers.get("if-match"))
        result = self.ix.update(
            call.session, resource_type, logical_id, call.json(), call.base, if_match=if_match
        )
        return self._written(call, result)

    def conditional_update(self, call: Call, resource_type: str) -> Response:
        if_match = parse_etag(call.request.headers.get("if-match"))
        condition = parse_search(resource_type, call.params())
        result = self.ix.conditional_update(
            call.session, resource_type, condition, call.json(), call.base, if_match=if_match
        )
        return self._written(call, result)

    def search(self, call: Call, resource_type: str, params: list[tuple[str, str]]) -> Response:
        request = parse_search(resource_type, params, lenient=call.prefs.lenient)
        page, included = self.ix.search(call.session, request)
        readable = [r for r in included if allows(call.role, r.resource_type, Access.READ)]
        text = searchset(
            call.base,
            resource_type,
            params,
            matches=page.matches,
            included=readable,
            total=page.total,
            offset=request.offset,
            count=request.count,
            has_more=page.has_more,
        )
        return fhir_response(text)

    def history(self, call: Call, resource_type: str, logical_id: str | None) -> Response:
        params = call.params()
        options: dict[str, Any] = {"count": DEFAULT_COUNT, "offset": 0, "since": None}
        for key, value in params:
            if key in ("_count", "_offset") and value.isdigit():
                options[key[1:]] = min(int(value), MAX_COUNT) if key == "_count" else int(value)
            elif key == "_since" and (moment := date_range(value)) is not None:
                options["since"] = moment[0]
            else:
                raise bad_request(f"'{key}' is not a history parameter here (_count, _offset, _since)", key)
        versions, total = self.ix.history(call.session, resource_type, logical_id, **options)
        url = f"{call.base}/{resource_type}" + (f"/{logical_id}" if logical_id else "") + "/_history"
        return fhir_response(
            history_bundle(
                call.base,
                url,
                params,
                versions,
                total=total,
                offset=options["offset"],
                count=options["count"],
            )
        )

    def bundle(self, call: Call) -> Response:
        kind, entries = bundles.parse_bundle(call.json(), call.base)
        counts = Counter(e.resource_type for e in entries)
        call.note.detail = f"{kind} entries={len(entries)} " + ",".join(
            f"{t}x{n}" for t, n in sorted(counts.items())
        )
        process = bundles.transaction if kind == "transaction" else bundles.batch
        text = process(self.ix, call.session, entries, call.base, call.authorize, call.prefs.returns)
        return fhir_response(text)


def make_router(registry: ProviderRegistry | None = None) -> APIRouter:
    """The ``/fhir`` router over *registry* (default: the domain-backed types, Patient,
    Observation, ServiceRequest, ImagingStudy and DiagnosticReport, and the generic store for the
    rest: :func:`integrations.fhir.domain.domain_registry`)."""
    api = FhirApi(registry or domain_registry())
    router = APIRouter(prefix=PREFIX, tags=["fhir"])
    load_models()

    @router.get("/metadata")
    async def metadata(request: Request) -> Response:
        base = str(request.base_url).rstrip("/") + PREFIX
        return fhir_response(json.dumps(capability_statement(api.registry, base)))

    @router.post("")
    @router.post("/")
    async def bundle(request: Request) -> Response:
        return await api.run(request, AuditNote("bundle", "Bundle"), None, api.bundle, body=True)

    @router.get("/{resource_type}")
    async def search(request: Request, resource_type: str) -> Response:
        names = ",".join(sorted({k.split(":")[0] for k in request.query_params}))
        note = AuditNote("search", resource_type, detail=f"params={names}")
        return await api.run(request, note, Access.READ, lambda c: api.search(c, resource_type, c.params()))

    @router.post("/{resource_type}/_search")
    async def search_post(request: Request, resource_type: str) -> Response:
        def work(call: Call) -> Response:
            form = parse_qsl(call.body.decode("utf-8", "replace"), keep_blank_values=True)
            return api.search(call, resource_type, [*call.params(), *form])

        return await api.run(request, AuditNote("search", resource_type), Access.READ, work, body=True)

    @router.get("/{resource_type}/_history")
    async def type_history(request: Request, resource_type: str) -> Response:
        note = AuditNote("history", resource_type)
        return await api.run(request, note, Access.READ, lambda c: api.history(c, resource_type, None))

    @router.get("/{resource_type}/{logical_id}")
    async def read(request: Request, resource_type: str, logical_id: str) -> Response:
        note = AuditNote("read", resource_type, logical_id)
        return await api.run(request, note, Access.READ, lambda c: api.read(c, resource_type, logical_id))

    @router.get("/{resource_type}/{logical_id}/_history")
    async def instance_history(request: Request, resource_type: str, logical_id: str) -> Response:
        note = AuditNote("history", resource_type, logical_id)
        return await api.run(request, note, Access.READ, lambda c: api.history(c, resource_type, logical_id))

    @router.get("/{resource_type}/{logical_id}/_history/{version}")
    async def vread(request: Request, resource_type: str, logical_id: str, version: str) -> Response:
        note = AuditNote("vread", resource_type, logical_id, detail=f"version={version[:16]}")
        return await api.run(
            request, note, Access.READ, lambda c: api.vread(c, resource_type, logical_id, version)
        )

    @router.post("/{resource_type}")
    async def create(request: Request, resource_type: str) -> Response:
        note = AuditNote("create", resource_type)
        return await api.run(request, note, Access.WRITE, lambda c: api.create(c, resource_type), body=True)

    @router.put("/{resource_type}/{logical_id}")
    async def update(request: Request, resource_type: str, logical_id: str) -> Response:
        note = AuditNote("update", resource_type, logical_id)
        return await api.run(
            request, note, Access.WRITE, lambda c: api.update(c, resource_type, logical_id), body=True
        )

    @router.put("/{resource_type}")
    async def conditional_update(request: Request, resource_type: str) -> Response:
        note = AuditNote("update", resource_type)
        work: Work = lambda c: api.conditional_update(c, resource_type)  # noqa: E731
        return await api.run(request, note, Access.WRITE, work, body=True)

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    async def unsupported(request: Request, path: str) -> Response:
        if request.method in ("DELETE", "PATCH"):
            exc = error(405, IssueType.NOT_SUPPORTED, f"{request.method} is not supported by this server")
        else:
            exc = not_found(f"no FHIR interaction at {PREFIX}/{path[:64]}")
        return error_response(exc)

    return router
