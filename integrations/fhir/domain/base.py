"""Domain rows served as FHIR resources through part 1's versioned store.

Design: the domain tables stay the source of truth (HL7 v2, DICOM and the AI worker write them).
A :class:`ProjectedProvider` keeps, per domain row, the FHIR JSON *projection* of that row in
``clinic.fhirstore`` under the row's id (``Patient/42`` is ``patients.id = 42``): before any read,
search or history of its type it re-projects the rows changed since their projection (one query
finds them: no projection yet, or one older than the row's change time). A projection is written
as a new version, so vread, ``_history``, ETags, ``If-Match``, every search parameter, ``_sort``,
paging and ``_include`` are part 1's, unchanged, and need no new column. Resources created through
FHIR that have no domain counterpart (uuid ids) stay generic-stored beside them.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import Select, String, cast, or_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.fhirstore import service as store
from clinic.fhirstore.models import FhirResource
from integrations.fhir.outcome import FhirError, Issue, IssueType
from integrations.fhir.providers import (
    IndexEntry,
    NewResource,
    SearchPage,
    StoredProvider,
    StoredResource,
    VersionConflictError,
)
from integrations.fhir.search import SearchRequest, index_entries

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
DICOM_UID = "urn:ietf:rfc:3986"


def instant(moment: dt.datetime | None) -> str | None:
    return store.instant(moment) if moment is not None else None


def outdated(
    query: Select[Any],
    id_column: Any,
    changed: Sequence[Any],
    resource_type: str,
    since: dt.datetime | None = None,
    limit: int | None = None,
    after: int = 0,
) -> Select[Any]:
    """*query* narrowed to rows with no projection of *resource_type*, or one older than any of
    the *changed* timestamp columns; only rows changed at or after *since* when given (each
    ``changed`` column is indexed: the look-up reads the recent rows, not the whole table); the
    first *limit* by id, after the id *after* (a sync's pages)."""
    if since is not None:
        query = query.where(or_(*(c >= since for c in changed)))
    joined = query.outerjoin(
        FhirResource,
        (FhirResource.resource_type == resource_type) & (FhirResource.logical_id == cast(id_column, String)),
    )
    narrowed = joined.where(or_(FhirResource.id.is_(None), *(FhirResource.last_updated < c for c in changed)))
    if after:
        narrowed = narrowed.where(id_column > after)
    return narrowed if limit is None else narrowed.order_by(id_column).limit(limit)


#: A sync looks again at rows changed this long before the last sync that found nothing to do:
#: longer than any writer's transaction (a row is stamped when written and seen when committed:
#: the platform's longest, an HL7 processing batch or a large FHIR transaction, take seconds) and
#: any clock difference between the platform's hosts (NTP keeps them within milliseconds). Every
#: read re-examines the rows of this window, so it is kept short.
SYNC_MARGIN = dt.timedelta(seconds=60)
#: Rows projected per round of a sync (each round's statements stay far below the databases'
#: bound-parameter limits: 32,766 in SQLite, 65,535 in PostgreSQL).
SYNC_CHUNK = 2_000


#: Elements never carried over from a stored version into a new projection: ``text`` would be a
#: stale narrative of the old content.
_NOT_CARRIED = frozenset({"resourceType", "id", "meta", "text"})


def method_not_allowed(diagnostics: str, expression: str) -> FhirError:
    """405 (R4 http.html §3.1.0.4 update: "405 Method Not allowed - the resource did not exist
    prior to the update, and the server does not allow client defined ids"; and an interaction the
    server does not support on that resource). ``Allow`` is required with 405 (RFC 9110 §15.5.6)."""
    return FhirError(
        405, [Issue(IssueType.NOT_SUPPORTED, diagnostics, (expression,))], {"Allow": "GET, HEAD"}
    )


def is_domain_id(logical_id: str) -> bool:
    """Domain rows project under their integer primary key; generic resources get uuids."""
    return logical_id.isdigit()


class ProjectedProvider(StoredProvider):
    """A type whose domain rows are projected into the generic store before every read.

    Writes: resources without a domain row (uuid ids) are generic-stored as before. A domain row's
    projection is read-only (405) unless the subclass sets :attr:`domain_elements` and overrides
    :meth:`write_domain`; a PUT that would create a numeric id is refused too (405): numeric ids
    belong to domain rows, and a generic resource under one would collide with a later row.
    """

    update_create = False  # numeric ids are the platform's; PUT never creates one
    capability_note = (
        "Numeric ids are views of the platform's own records (from DICOM, HL7 v2 and AI reads): "
        "they are assigned by the platform and read-only unless stated otherwise."
    )
    #: The elements the domain row determines. When set, a new projection keeps the other
    #: elements of the stored version (what a FHIR client sent that the domain has no column for).
    domain_elements: frozenset[str] = frozenset()

    def __init__(self, resource_type: str) -> None:
        super().__init__(resource_type)
        #: When the last sync of this process began that found every projection current.
        self._synced_at: dt.datetime | None = None

    def read_only(self, logical_id: str) -> FhirError:
        return method_not_allowed(
            f"{self.resource_type}/{logical_id} is a view of the platform's own records "
            "(DICOM, HL7 v2, AI reads) and is read-only through FHIR",
            self.resource_type,
        )

    def write_domain(
        self, session: Session, logical_id: str, body: dict[str, Any], expected_version: int | None
    ) -> StoredResource | None:
        """Apply a PUT to the domain row *logical_id* and project it; None when no such row."""
        raise self.read_only(logical_id)

    def create(self, session: Session, items: Sequence[NewResource]) -> list[StoredResource]:
        for item in items:
            if item.method == "PUT" and is_domain_id(item.logical_id):
                raise method_not_allowed(
                    f"numeric {self.resource_type} ids are assigned by the platform: "
                    "POST the resource instead",
                    f"{self.resource_type}.id",
                )
        return super().create(session, items)

    def update(
        self,
        session: Session,
        logical_id: str,
        body: dict[str, Any],
        index: Sequence[IndexEntry],
        *,
        expected_version: int | None = None,
    ) -> StoredResource | None:
        if not is_domain_id(logical_id):
            return super().update(session, logical_id, body, index, expected_version=expected_version)
        if self.domain_elements:  # write_domain locks the row first, then catches up its projection
            return self.write_domain(session, logical_id, body, expected_version)
        self.sync(session)
        if super().read(session, logical_id) is None:
            return None
        raise self.read_only(logical_id)

    def extras(self, body: dict[str, Any]) -> dict[str, Any]:
        """The elements of *body* the domain does not hold."""
        skip = self.domain_elements | _NOT_CARRIED
        return {k: v for k, v in body.items() if k not in skip}

    @abstractmethod
    def pending(
        self, session: Session, since: dt.datetime | None = None, limit: int | None = None, after: int = 0
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        """(logical id, FHIR body) of the domain rows whose projection is missing or older
        (among the rows changed at or after *since*, when given; the first *limit* by id after
        *after*, when given: :func:`outdated`)."""

    def sync(self, session: Session) -> int:
        """Project the changed rows; how many.

        Incremental: once a sync of this process found nothing to do, later ones look only at
        rows changed since then (less :data:`SYNC_MARGIN`), through the changed columns'
        indexes; the first sync of a process looks at every row. The mark moves only when
        nothing was written, so projections written by a request that then rolls back are
        looked for again. Rows never projected are created together (one bulk insert, after an
        HL7 feed of many vitals, say); the others become new versions one by one."""
        started = utcnow()
        since = None if self._synced_at is None else self._synced_at - SYNC_MARGIN
        done, after = 0, 0
        while True:  # a page at a time, by id: each statement stays within the parameter limits
            rows = list(self.pending(session, since, SYNC_CHUNK, after))
            if not rows:
                break
            self.project_many(session, [(logical_id, body, None) for logical_id, body in rows])
            done += len(rows)
            after = max(int(i) for i, _ in rows)
        if not done:
            self._synced_at = started
        return done

    def project_many(
        self,
        session: Session,
        rows: Sequence[tuple[str, dict[str, Any], dict[str, Any] | None]],
        look_up: Collection[str] | None = None,
    ) -> list[StoredResource]:
        """Project each (logical id, body, extras) as :meth:`project` does, in order. The ids with no
        projection yet, once each, are created together (one bulk insert); the others, and all of
        them when a concurrent request projected one meanwhile, one by one. *look_up*: the ids that
        may have a projection (default: all); a caller that knows a row is new leaves it out."""
        ids = [logical_id for logical_id, _, _ in rows]
        wanted = ids if look_up is None else list(look_up)
        current = (
            {s.logical_id for s in store.get_many(session, self.resource_type, wanted)} if wanted else set()
        )
        once = Counter(ids)
        first = [n for n, logical_id in enumerate(ids) if logical_id not in current and once[logical_id] == 1]
        created: dict[int, StoredResource] = {}
        if first:
            items = []
            for n in first:
                logical_id, body, extras = rows[n]
                full = {"resourceType": self.resource_type, "id": logical_id, **body, **(extras or {})}
                items.append(
                    store.NewResource(
                        self.resource_type, logical_id, full, index_entries(self.resource_type, full)
                    )
                )
            try:
                with session.begin_nested():
                    created.update(zip(first, store.create_many(session, items), strict=True))
            except IntegrityError:  # a concurrent request projected some: one by one below
                pass
        stored = []
        for n, (logical_id, body, extras) in enumerate(rows):
            result = created.get(n) or self.project(session, logical_id, body, extras)
            assert result is not None  # project() returns the stored version on a lost race
            stored.append(result)
        return stored

    def project(
        self,
        session: Session,
        logical_id: str,
        body: dict[str, Any],
        extras: dict[str, Any] | None = None,
    ) -> StoredResource | None:
        """Write *body* as the next version of *logical_id* (version 1 when new), with *extras*
        (elements the domain does not hold; by default those of the stored version). A concurrent
        request projecting the same row wins quietly: its version is the same content."""
        current = store.get(session, self.resource_type, logical_id)
        if extras is None:
            extras = self.extras(current.body()) if current is not None and self.domain_elements else {}
        body = {"resourceType": self.resource_type, "id": logical_id, **body, **extras}
        index = index_entries(self.resource_type, body)
        try:
            with session.begin_nested():
                if current is None:
                    return store.create_many(
                        session, [store.NewResource(self.resource_type, logical_id, body, index)]
                    )[0]
                return store.update(
                    session, self.resource_type, logical_id, body, index, expected_version=current.version_id
                )
        except (IntegrityError, VersionConflictError):
            return store.get(session, self.resource_type, logical_id)

    # --- reads: catch up, then part 1's store -----------------------------------------------

    def read(self, session: Session, logical_id: str) -> StoredResource | None:
        self.sync(session)
        return super().read(session, logical_id)

    def vread(self, session: Session, logical_id: str, version_id: int) -> StoredResource | None:
        self.sync(session)
        return super().vread(session, logical_id, version_id)

    def read_many(self, session: Session, logical_ids: Iterable[str]) -> list[StoredResource]:
        self.sync(session)
        return super().read_many(session, logical_ids)

    def exists(self, session: Session, logical_ids: Iterable[str]) -> set[str]:
        self.sync(session)
        return super().exists(session, logical_ids)

    def search(self, session: Session, request: SearchRequest) -> SearchPage:
        self.sync(session)
        return super().search(session, request)

    def history(
        self,
        session: Session,
        logical_id: str | None,
        *,
        since: Any = None,
        offset: int = 0,
        count: int = 20,
    ) -> tuple[list[StoredResource], int]:
        self.sync(session)
        return super().history(session, logical_id, since=since, offset=offset, count=count)


def reference(resource_type: str, row_id: int | None) -> dict[str, str] | None:
    return {"reference": f"{resource_type}/{row_id}"} if row_id is not None else None


def compact(body: dict[str, Any]) -> dict[str, Any]:
    """*body* without empty values (FHIR forbids empty elements, R4 json.html §2.6.2.1)."""
    return {k: v for k, v in body.items() if v not in (None, "", [], {})}
