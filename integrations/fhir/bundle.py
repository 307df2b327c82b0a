"""Batch and transaction Bundles (FHIR R4 http.html §3.1.0.11, bundle.html §2.36.4).

A *transaction* is all or nothing: every entry is validated, ids are assigned, ``urn:uuid``
fullUrls are rewritten to the ids they became in every reference of every entry, references are
checked, and only then is anything written, in the caller's single transaction (one commit; an
error anywhere raises and rolls the whole Bundle back). Entries are processed in the order the
specification gives (POST, then PUT, then GET); DELETE and PATCH are not supported. Creates of one
type are written with one multi-row INSERT per table.

A *batch* runs each entry on its own (a savepoint per entry); a failed entry answers with its
status and OperationOutcome and leaves the others alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.orm import Session

from clinic.fhirstore import service as store
from integrations.fhir.interactions import ClaimConflictError, Interactions, WriteResult, new_id
from integrations.fhir.outcome import FhirError, IssueType, bad_request, precondition_failed
from integrations.fhir.providers import NewResource, StoredResource
from integrations.fhir.responses import Return, bundle_text, etag, searchset, splice, status_line
from integrations.fhir.scopes import Access
from integrations.fhir.search import SearchRequest, parse_search
from integrations.fhir.validation import CheckedResource, ReferenceSite, check_envelope

#: Checks that the caller may do *access* on a type; raises a 403 FhirError otherwise.
Authorize = Callable[[str, Access], None]

SUPPORTED_METHODS = ("POST", "PUT", "GET")
_ORDER = {"POST": 0, "PUT": 1, "GET": 2}


@dataclass
class Entry:
    """One ``Bundle.entry`` with its request parsed."""

    position: int
    method: str
    resource_type: str
    logical_id: str | None
    history_version: str | None
    query: list[tuple[str, str]] | None
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    # Filled in while a transaction is resolved:
    checked: CheckedResource | None = None
    condition: SearchRequest | None = None
    existing: StoredResource | None = None
    stale_claim: str | None = None
    result: WriteResult | None = None
    searched: str | None = None
    body_text: str | None = None
    issues: list[Any] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"Bundle.entry[{self.position}]"

    @property
    def access(self) -> Access:
        return Access.READ if self.method == "GET" else Access.WRITE


def _parse_url(url: str, base: str, where: str) -> tuple[str, list[str], list[tuple[str, str]] | None]:
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    path, question, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise bad_request("request.url must name a resource type", f"{where}.request.url")
    return parts[0], parts[1:], parse_qsl(query, keep_blank_values=True) if question else None


def _if_match(request: dict[str, Any], where: str) -> int | None:
    value = request.get("ifMatch")
    if value is None:
        return None
    text = str(value).removeprefix("W/").strip('"')
    if not text.isdigit():
        raise bad_request('ifMatch must be a version ETag such as W/"3"', f"{where}.request.ifMatch")
    return int(text)


def parse_bundle(body: Any, base: str) -> tuple[str, list[Entry]]:
    """The Bundle's type (batch or transaction) and its entries; 400 when it is neither."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise bad_request("POST to the base takes a Bundle", "Bundle.resourceType")
    kind = body.get("type")
    if kind not in ("batch", "transaction"):
        raise bad_request(
            "the Bundle's type must be batch or transaction", "Bundle.type", code=IssueType.NOT_SUPPORTED
        )
    check_envelope(body)
    entries = []
    for position, raw in enumerate(body.get("entry") or []):
        where = f"Bundle.entry[{position}]"
        request = raw.get("request") or {}
        method = str(request.get("method", ""))
        if not request:
            raise bad_request("every entry needs a request", f"{where}.request", code=IssueType.REQUIRED)
        if method not in SUPPORTED_METHODS:
            raise bad_request(
                f"{method} is not supported in a Bundle",
                f"{where}.request.method",
                code=IssueType.NOT_SUPPORTED,
            )
        resource_type, rest, query = _parse_url(str(request.get("url", "")), base, where)
        if method in ("POST", "PUT") and not isinstance(raw.get("resource"), dict):
            raise bad_request(
                f"a {method} entry needs a resource", f"{where}.resource", code=IssueType.REQUIRED
            )
        history = rest[2] if len(rest) == 3 and rest[1] == "_history" else None
        entries.append(
            Entry(
                position=position,
                method=method,
                resource_type=resource_type,
                logical_id=rest[0] if rest else None,
                history_version=history,
                query=query,
                resource=raw.get("resource"),
                full_url=raw.get("fullUrl"),
                if_none_exist=request.get("ifNoneExist"),
                if_match=_if_match(request, where),
            )
        )
    return kind, entries


# --- transaction --------------------------------------------------------------------------------


def _checked(ix: Interactions, entry: Entry) -> CheckedResource:
    root = f"{entry.root}.resource"
    body = entry.resource
    if entry.method == "PUT" and entry.logical_id is not None and body.get("id") != entry.logical_id:
        raise bad_request("the resource's id does not match request.url", f"{root}.id")
    try:
        return ix.check(body, entry.resource_type, root)
    except FhirError as exc:
        raise exc.rooted(entry.resource_type, root) from None


def _resolve(ix: Interactions, session: Session, entry: Entry) -> None:
    """Decide the id each write gets: conditional ones search first (in this transaction)."""
    provider = ix.provider(entry.resource_type)
    if entry.method == "POST" and entry.if_none_exist:
        entry.condition = parse_search(entry.resource_type, parse_qsl(entry.if_none_exist))
    elif entry.method == "PUT" and entry.logical_id is None:
        entry.condition = parse_search(entry.resource_type, entry.query or [])
        if not entry.condition.clauses:
            raise bad_request("a conditional update needs search criteria", f"{entry.root}.request.url")
    if entry.condition is not None:
        # Claim first, then search: see Interactions.claim_or_find.
        entry.stale_claim = store.claimed_id(session, entry.resource_type, entry.condition.criteria_hash())
        probe = SearchRequest(entry.resource_type, entry.condition.clauses, count=2)
        matches = provider.search(session, probe).matches
        if len(matches) > 1:
            raise precondition_failed(
                f"{entry.root}: the criteria match more than one resource", IssueType.MULTIPLE_MATCHES
            )
        if matches:
            entry.existing = matches[0]
            entry.logical_id = matches[0].logical_id
    if entry.logical_id is None:
        given = entry.resource.get("id") if entry.method == "PUT" else None
        entry.logical_id = str(given or new_id())


def _rewrite(sites: list[ReferenceSite], mapping: dict[str, str]) -> None:
    for site in sites:
        target = mapping.get(site.reference)
        if target is not None:
            site.element["reference"] = target


def _write(ix: Interactions, session: Session, writes: list[Entry]) -> None:
    creates: dict[str, list[Entry]] = defaultdict(list)
    for entry in writes:
        # A conditional PUT that matched nothing creates under an id of the server's choosing,
        # like a POST (http.html §3.1.0.4.3), so a provider that assigns ids may replace it.
        conditional_create = entry.method == "PUT" and entry.condition is not None
        if (entry.method == "POST" or conditional_create) and entry.existing is None:
            creates[entry.resource_type].append(entry)
    # Patients first: their provider assigns the domain id (not the one _resolve chose), and the
    # references of the entries written after them are moved to it.
    for resource_type, group in sorted(creates.items(), key=lambda kv: kv[0] != "Patient"):
        # Index entries are left to the provider: a domain type indexes its own projection.
        items = [
            NewResource(resource_type, str(e.logical_id), e.checked.body, index=None)
            for e in group
            if e.checked is not None
        ]
        moved: dict[str, str] = {}
        for entry, stored in zip(group, ix.provider(resource_type).create(session, items), strict=True):
            entry.result = WriteResult(stored, created=True)
            if stored.logical_id != entry.logical_id:
                moved[f"{resource_type}/{entry.logical_id}"] = f"{resource_type}/{stored.logical_id}"
                entry.logical_id = stored.logical_id
        if moved:
            _rewrite([s for e in writes if e.checked is not None for s in e.checked.references], moved)
    for entry in writes:
        if entry.method == "POST" and entry.existing is not None:
            entry.result = WriteResult(entry.existing, created=False, written=False)
        elif entry.method == "PUT" and entry.checked is not None and entry.result is None:
            body = {**entry.checked.body, "id": entry.logical_id}
            entry.result = ix.write_version(
                session, entry.resource_type, str(entry.logical_id), body, if_match=entry.if_match
            )
        if entry.condition is not None and entry.result is not None and entry.result.created:
            # Claimed in this transaction: a concurrent identical transaction fails here
            # (IntegrityError or ClaimConflictError) and is retried by the caller, then finds
            # this one's resource.
            _claim(session, entry, entry.condition.criteria_hash(), entry.result.resource.logical_id)


def _claim(session: Session, entry: Entry, criteria: str, logical_id: str) -> None:
    if entry.stale_claim is None:
        store.claim(session, entry.resource_type, criteria, logical_id)
    elif not store.move_claim(session, entry.resource_type, criteria, entry.stale_claim, logical_id):
        raise ClaimConflictError


def transaction(
    ix: Interactions,
    session: Session,
    entries: list[Entry],
    base: str,
    authorize: Authorize,
    returns: Return,
) -> str:
    """Process a transaction; the ``transaction-response`` Bundle as JSON text."""
    for entry in entries:
        authorize(entry.resource_type, entry.access)
    ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.position))
    writes = [e for e in ordered if e.method != "GET"]
    for entry in writes:
        entry.checked = _checked(ix, entry)
    mapping: dict[str, str] = {}
    targets: set[tuple[str, str]] = set()  # resources this Bundle writes or names
    written: set[tuple[str, str]] = set()
    for entry in writes:
        try:
            _resolve(ix, session, entry)
        except FhirError as exc:
            raise exc.at(f"{entry.root}.request") from None
        key = (entry.resource_type, str(entry.logical_id))
        writes_it = not (entry.method == "POST" and entry.existing is not None)
        if writes_it and key in written:
            raise bad_request(f"{key[0]}/{key[1]} is written by two entries", entry.root)
        if writes_it:
            written.add(key)
        targets.add(key)
        if entry.full_url:
            if entry.full_url in mapping:
                raise bad_request("fullUrl appears twice", f"{entry.root}.fullUrl", code=IssueType.DUPLICATE)
            mapping[entry.full_url] = f"{key[0]}/{key[1]}"
    sites = [site for e in writes if e.checked is not None for site in e.checked.references]
    _rewrite(sites, mapping)
    ix.check_references(session, sites, base, known=targets)
    _write(ix, session, writes)
    for entry in ordered:
        if entry.method == "GET":
            _get(ix, session, entry, base)
    return _response_bundle("transaction-response", entries, returns)


# --- batch --------------------------------------------------------------------------------------


def _single(ix: Interactions, session: Session, entry: Entry, base: str, authorize: Authorize) -> None:
    authorize(entry.resource_type, entry.access)
    if entry.method == "GET":
        _get(ix, session, entry, base)
    elif entry.method == "POST":
        condition = (
            parse_search(entry.resource_type, parse_qsl(entry.if_none_exist)) if entry.if_none_exist else None
        )
        entry.result = ix.create(session, entry.resource_type, entry.resource, base, condition=condition)
    elif entry.logical_id is not None:
        entry.result = ix.update(
            session, entry.resource_type, entry.logical_id, entry.resource, base, if_match=entry.if_match
        )
    else:
        condition = parse_search(entry.resource_type, entry.query or [])
        entry.result = ix.conditional_update(
            session, entry.resource_type, condition, entry.resource, base, if_match=entry.if_match
        )


def batch(
    ix: Interactions,
    session: Session,
    entries: list[Entry],
    base: str,
    authorize: Authorize,
    returns: Return,
) -> str:
    """Process a batch: each entry on its own; the ``batch-response`` Bundle as JSON text."""
    for entry in sorted(entries, key=lambda e: (_ORDER[e.method], e.position)):
        try:
            with session.begin_nested():
                _single(ix, session, entry, base, authorize)
        except FhirError as exc:
            entry.issues = [exc]
    return _response_bundle("batch-response", entries, returns)


# --- reads inside bundles and the response ------------------------------------------------------


def _get(ix: Interactions, session: Session, entry: Entry, base: str) -> None:
    if entry.logical_id is None:
        request = parse_search(entry.resource_type, entry.query or [])
        page, included = ix.search(session, request)
        entry.searched = searchset(
            base,
            entry.resource_type,
            list(request.criteria),
            matches=page.matches,
            included=included,
            total=page.total,
            offset=request.offset,
            count=request.count,
            has_more=page.has_more,
        )
    elif entry.history_version is not None:
        entry.existing = ix.vread(session, entry.resource_type, entry.logical_id, entry.history_version)
    else:
        entry.existing = ix.read(session, entry.resource_type, entry.logical_id)


def _response_entry(entry: Entry, returns: Return) -> str:
    if entry.issues:
        exc: FhirError = entry.issues[0]
        return splice({"response": {"status": status_line(exc.status), "outcome": exc.outcome()}}, None)
    if entry.searched is not None:
        return splice({"response": {"status": status_line(200)}}, entry.searched)
    result = entry.result
    resource = result.resource if result is not None else entry.existing
    if resource is None:
        return splice({"response": {"status": status_line(200)}}, None)
    code = 201 if result is not None and result.created else 200
    response = {
        "status": status_line(code),
        "location": f"{resource.resource_type}/{resource.logical_id}/_history/{resource.version_id}",
        "etag": etag(resource.version_id),
        "lastModified": store.instant(resource.last_updated),
    }
    content = resource.content if entry.method == "GET" or returns is Return.REPRESENTATION else None
    return splice({"response": response}, content)


def _response_bundle(kind: str, entries: list[Entry], returns: Return) -> str:
    head = {"resourceType": "Bundle", "id": new_id(), "type": kind}
    return bundle_text(head, (_response_entry(e, returns) for e in entries))
