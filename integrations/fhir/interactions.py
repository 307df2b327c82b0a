"""The FHIR RESTful interactions, free of HTTP: read, vread, create, update, search, history.

FHIR R4 http.html. Each method runs in the caller's session (one unit of work per request, or
per bundle). Conditional create and conditional update stay correct when identical requests
race: the criteria are claimed in ``fhir_conditional_claims`` (unique) in the same transaction
as the resource, so the database lets one request create and sends the others back to search,
where they find the winner's resource (PostgreSQL: the loser's INSERT waits for the winner's
commit, then fails; SQLite: ``BEGIN IMMEDIATE`` serialises the writers).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.fhirstore import service as store
from integrations.fhir.outcome import (
    FhirError,
    Issue,
    IssueType,
    bad_request,
    error,
    not_found,
    precondition_failed,
)
from integrations.fhir.providers import (
    NewResource,
    ProviderRegistry,
    ResourceProvider,
    SearchPage,
    StoredResource,
    VersionConflictError,
)
from integrations.fhir.resources import SERVED_TYPES
from integrations.fhir.search import SearchRequest, index_entries, references_at
from integrations.fhir.validation import (
    ID_PATTERN,
    RELATIVE_REFERENCE,
    CheckedResource,
    ReferenceSite,
    check_resource,
)

#: How often a conditional write searches again after losing a race for its criteria. Two
#: suffice (lose once, then find the winner); the rest cover a claim handed on meanwhile.
CLAIM_ATTEMPTS = 5


class ClaimConflictError(Exception):
    """Another request moved a stale claim first: search again (or retry the unit of work)."""


@dataclass(frozen=True)
class WriteResult:
    resource: StoredResource
    #: True: a new resource (201 Created); False: an update, or an existing match (200 OK).
    created: bool
    #: False when a conditional create found its match and wrote nothing.
    written: bool = True


def new_id() -> str:
    return str(uuid.uuid4())


class Interactions:
    """The interactions over a :class:`ProviderRegistry`. *base* is the server's base URL, used
    to recognise absolute references to this server."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self.registry = registry

    def provider(self, resource_type: str) -> ResourceProvider:
        provider = self.registry.get(resource_type)
        if provider is None:
            raise not_found(f"resource type '{resource_type}' is not served here")
        return provider

    # --- reads --------------------------------------------------------------------------------

    def read(self, session: Session, resource_type: str, logical_id: str) -> StoredResource:
        found = (
            self.provider(resource_type).read(session, logical_id) if ID_PATTERN.match(logical_id) else None
        )
        if found is None:
            raise not_found(f"{resource_type}/{logical_id} is not known")
        return found

    def vread(self, session: Session, resource_type: str, logical_id: str, version: str) -> StoredResource:
        found = None
        if ID_PATTERN.match(logical_id) and version.isdigit():
            found = self.provider(resource_type).vread(session, logical_id, int(version))
        if found is None:
            raise not_found(f"{resource_type}/{logical_id}/_history/{version} is not known")
        return found

    def search(self, session: Session, request: SearchRequest) -> tuple[SearchPage, list[StoredResource]]:
        """A page of matches and the resources its ``_include`` parameters bring along."""
        page = self.provider(request.resource_type).search(session, request)
        return page, self._included(session, request, page.matches)

    def _included(
        self, session: Session, request: SearchRequest, matches: list[StoredResource]
    ) -> list[StoredResource]:
        if not request.includes or not matches:
            return []
        wanted: dict[str, set[str]] = defaultdict(set)
        for resource in matches:
            body = resource.body()
            for include in request.includes:
                for target_type, target_id in references_at(include.param, body):
                    if include.target is None or include.target == target_type:
                        wanted[target_type].add(target_id)
        seen = {(r.resource_type, r.logical_id) for r in matches}
        included = []
        for target_type, ids in sorted(wanted.items()):
            provider = self.registry.get(target_type)
            if provider is None:
                continue
            for found in provider.read_many(session, ids):
                if (found.resource_type, found.logical_id) not in seen:
                    seen.add((found.resource_type, found.logical_id))
                    included.append(found)
        return included

    # --- validation and references --------------------------------------------------------------

    def check(self, body: Any, resource_type: str, root: str | None = None) -> CheckedResource:
        self.provider(resource_type)
        return check_resource(body, resource_type, root)

    def check_references(
        self,
        session: Session,
        sites: Iterable[ReferenceSite],
        base: str,
        known: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        """Every literal reference to this server must resolve (422 otherwise, naming the element);
        *known* are resources written by the same transaction. Contained (``#id``) and other
        servers' absolute references are not ours to check."""
        wanted: dict[str, dict[str, str]] = defaultdict(dict)
        versioned: list[tuple[str, str, str, str]] = []
        issues: list[Issue] = []
        for site in sites:
            reference = site.reference
            if reference.startswith("#"):
                continue
            if reference.startswith(base + "/"):
                reference = reference[len(base) + 1 :]
            elif reference.startswith(("http://", "https://")):
                continue
            match = RELATIVE_REFERENCE.match(reference)
            if match is None:
                issues.append(
                    Issue(IssueType.NOT_FOUND, "reference does not resolve to a resource", (site.expression,))
                )
                continue
            target_type = match["type"]
            if site.targets and "Resource" not in site.targets and target_type not in site.targets:
                raise bad_request(
                    f"this element may refer to {', '.join(site.targets)}, not {target_type}",
                    site.expression,
                )
            if target_type not in SERVED_TYPES:
                issues.append(
                    Issue(
                        IssueType.NOT_FOUND,
                        f"{target_type} resources are not served here",
                        (site.expression,),
                    )
                )
            elif (target_type, match["id"]) not in known:
                wanted[target_type][match["id"]] = site.expression
                if match["vid"]:
                    versioned.append((target_type, match["id"], match["vid"], site.expression))
        for target_type, ids in wanted.items():
            present = self.provider(target_type).exists(session, ids)
            issues += [
                Issue(IssueType.NOT_FOUND, f"{target_type}/{i} does not exist", (where,))
                for i, where in ids.items()
                if i not in present
            ]
        for target_type, target_id, version, where in versioned:
            if (
                not version.isdigit()
                or self.provider(target_type).vread(session, target_id, int(version)) is None
            ):
                issues.append(Issue(IssueType.NOT_FOUND, "that version does not exist", (where,)))
        if issues:
            raise FhirError(422, issues)

    # --- writes -------------------------------------------------------------------------------

    def create(
        self,
        session: Session,
        resource_type: str,
        body: Any,
        base: str,
        *,
        condition: SearchRequest | None = None,
    ) -> WriteResult:
        """``POST [base]/[type]``, conditional when *condition* (``If-None-Exist``) is given."""
        checked = self.check(body, resource_type)
        self.check_references(session, checked.references, base)
        item = NewResource(resource_type, new_id(), checked.body, index_entries(resource_type, checked.body))
        provider = self.provider(resource_type)
        if condition is None:
            return WriteResult(provider.create(session, [item])[0], created=True)
        found, created = self.claim_or_find(session, provider, item, condition)
        return WriteResult(found, created=created, written=created)

    def claim_or_find(
        self, session: Session, provider: ResourceProvider, item: NewResource, condition: SearchRequest
    ) -> tuple[StoredResource, bool]:
        """The one resource matching *condition* (False), or *item* created and claimed for the
        criteria (True). 412 when several match (http.html §3.1.0.8)."""
        criteria = condition.criteria_hash()
        probe = replace(condition, count=2, offset=0, total=False, sort=(), includes=())
        for _ in range(CLAIM_ATTEMPTS):
            # The claim is read before searching: a claim commits with its resource, so one seen
            # here has its resource visible to the search below, and a claim whose resource the
            # search does not find is stale (the resource has changed and no longer matches).
            stale = store.claimed_id(session, provider.resource_type, criteria)
            matches = provider.search(session, probe).matches
            if len(matches) > 1:
                raise precondition_failed(
                    "the criteria match more than one resource", IssueType.MULTIPLE_MATCHES
                )
            if matches:
                return matches[0], False
            try:
                with session.begin_nested():
                    created = provider.create(session, [item])[0]
                    if stale is None:
                        store.claim(session, provider.resource_type, criteria, created.logical_id)
                    elif not store.move_claim(
                        session, provider.resource_type, criteria, stale, created.logical_id
                    ):
                        raise ClaimConflictError
                return created, True
            except (IntegrityError, ClaimConflictError):
                continue  # another request holds the criteria: its resource is there to find now
        raise error(409, IssueType.CONFLICT, "concurrent conditional requests did not settle; retry")

    def update(
        self,
        session: Session,
        resource_type: str,
        logical_id: str,
        body: Any,
        base: str,
        *,
        if_match: int | None = None,
    ) -> WriteResult:
        """``PUT [base]/[type]/[id]``; creates the resource under that id when it does not exist
        (update as create), unless ``If-Match`` names a version."""
        if not ID_PATTERN.match(logical_id):
            raise bad_request(f"'{logical_id}' is not a valid id")
        if isinstance(body, dict) and body.get("id") != logical_id:
            where = f"{resource_type}.id"
            if "id" not in body:
                raise bad_request("the resource must carry the id of the URL", where, code=IssueType.REQUIRED)
            raise bad_request("the resource's id does not match the URL's id", where)
        checked = self.check(body, resource_type)
        self.check_references(session, checked.references, base)
        return self.write_version(session, resource_type, logical_id, checked.body, if_match=if_match)

    def write_version(
        self,
        session: Session,
        resource_type: str,
        logical_id: str,
        body: dict[str, Any],
        *,
        if_match: int | None,
    ) -> WriteResult:
        """Store a validated body as the next version of *logical_id*, or as version 1."""
        provider = self.provider(resource_type)
        index = index_entries(resource_type, body)
        for _ in range(CLAIM_ATTEMPTS):
            try:
                stored = provider.update(session, logical_id, body, index, expected_version=if_match)
            except VersionConflictError as exc:
                raise precondition_failed(
                    f"If-Match names version {exc.expected}; the current version is {exc.current}"
                ) from exc
            if stored is not None:
                return WriteResult(stored, created=False)
            if if_match is not None:
                raise precondition_failed(f"{resource_type}/{logical_id} does not exist (If-Match given)")
            try:
                with session.begin_nested():
                    item = NewResource(resource_type, logical_id, body, index, method="PUT")
                    stored = provider.create(session, [item])[0]
                return WriteResult(stored, created=True)
            except IntegrityError:
                continue  # created concurrently: update that one
        raise error(409, IssueType.CONFLICT, "concurrent writes to this resource did not settle; retry")

    def conditional_update(
        self,
        session: Session,
        resource_type: str,
        condition: SearchRequest,
        body: Any,
        base: str,
        *,
        if_match: int | None = None,
    ) -> WriteResult:
        """``PUT [base]/[type]?[criteria]``: update the one match, create when none matches
        (claimed like a conditional create), 412 when several do."""
        if not condition.clauses:
            raise bad_request("a conditional update needs search criteria")
        checked = self.check(body, resource_type)
        self.check_references(session, checked.references, base)
        given_id = checked.body.get("id")
        provider = self.provider(resource_type)
        item = NewResource(
            resource_type, str(given_id or new_id()), checked.body, index_entries(resource_type, checked.body)
        )
        found, created = self.claim_or_find(session, provider, item, condition)
        if created:
            return WriteResult(found, created=True)
        if given_id is not None and given_id != found.logical_id:
            raise bad_request(
                "the resource's id is not the id of the resource matching the criteria", f"{resource_type}.id"
            )
        body_with_id = {**checked.body, "id": found.logical_id}
        return self.write_version(session, resource_type, found.logical_id, body_with_id, if_match=if_match)

    def history(
        self,
        session: Session,
        resource_type: str,
        logical_id: str | None,
        *,
        since: Any = None,
        offset: int = 0,
        count: int = 20,
    ) -> tuple[list[StoredResource], int]:
        provider = self.provider(resource_type)
        if logical_id is not None and provider.read(session, logical_id) is None:
            raise not_found(f"{resource_type}/{logical_id} is not known")
        return provider.history(session, logical_id, since=since, offset=offset, count=count)
