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
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, String, cast, or_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.fhirstore import service as store
from clinic.fhirstore.models import FhirResource
from integrations.fhir.providers import SearchPage, StoredProvider, StoredResource, VersionConflictError
from integrations.fhir.search import SearchRequest, index_entries

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
DICOM_UID = "urn:ietf:rfc:3986"


def instant(moment: dt.datetime | None) -> str | None:
    return store.instant(moment) if moment is not None else None


def outdated(query: Select[Any], id_column: Any, changed: Sequence[Any], resource_type: str) -> Select[Any]:
    """*query* narrowed to rows with no projection of *resource_type*, or one older than any of
    the *changed* timestamp columns."""
    joined = query.outerjoin(
        FhirResource,
        (FhirResource.resource_type == resource_type) & (FhirResource.logical_id == cast(id_column, String)),
    )
    return joined.where(or_(FhirResource.id.is_(None), *(FhirResource.last_updated < c for c in changed)))


class ProjectedProvider(StoredProvider):
    """A type whose domain rows are projected into the generic store before every read."""

    def __init__(self, resource_type: str) -> None:
        super().__init__(resource_type)

    @abstractmethod
    def pending(self, session: Session) -> Iterable[tuple[str, dict[str, Any]]]:
        """(logical id, FHIR body) of every domain row whose projection is missing or older."""

    def sync(self, session: Session) -> int:
        """Project the changed rows; how many."""
        done = 0
        for logical_id, body in self.pending(session):
            self.project(session, logical_id, body)
            done += 1
        return done

    def project(self, session: Session, logical_id: str, body: dict[str, Any]) -> StoredResource | None:
        """Write *body* as the next version of *logical_id* (version 1 when new). A concurrent
        request projecting the same row wins quietly: its version is the same content."""
        body = {"resourceType": self.resource_type, "id": logical_id, **body}
        index = index_entries(self.resource_type, body)
        current = store.get(session, self.resource_type, logical_id)
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
