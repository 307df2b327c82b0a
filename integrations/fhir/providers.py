"""Resource providers: where each resource type's data lives, behind one interface.

The API (:mod:`integrations.fhir.interactions`) validates, indexes, authorises and versions the
HTTP side; a :class:`ResourceProvider` reads and writes one type's data inside the caller's
transaction. :class:`StoredProvider` keeps resources as versioned JSON in ``clinic.fhirstore``;
a domain-backed provider (Patient on ``clinic.patients``, Observation on ``clinic.observations``,
...) replaces it for its type with :meth:`ProviderRegistry.replace`, and the rest of the API
(validation, conditional create, transactions, search parsing, paging, ``_include``) stays as it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from clinic.fhirstore import service as store
from clinic.fhirstore.service import IndexEntry, NewResource, StoredResource, VersionConflictError
from integrations.fhir.resources import SERVED_TYPES
from integrations.fhir.search import SearchRequest, index_entries

__all__ = [
    "IndexEntry",
    "NewResource",
    "ProviderRegistry",
    "ResourceProvider",
    "SearchPage",
    "StoredProvider",
    "StoredResource",
    "VersionConflictError",
]


@dataclass(frozen=True)
class SearchPage:
    """One page of matches, whether more follow, and the total when it is known."""

    matches: list[StoredResource]
    has_more: bool
    total: int | None = None


class ResourceProvider(ABC):
    """Storage of one resource type. Every method runs in the caller's session and transaction
    and never commits. Resources travel as :class:`StoredResource` (JSON text with id and meta);
    bodies handed to :meth:`create`/:meth:`update` are already validated, with references
    resolved, and come with their search-index entries (a provider with its own tables may ignore
    them). Concurrency: :meth:`update` must refuse a stale *expected_version* with
    :class:`VersionConflictError`, and :meth:`create` must fail (``IntegrityError``) rather than
    store a second resource under an id that exists."""

    resource_type: str
    #: Whether PUT may create a resource under an id the client chooses (CapabilityStatement
    #: ``updateCreate``); views of domain rows assign their ids themselves.
    update_create: bool = True
    #: Said in the CapabilityStatement's per-resource documentation (e.g. what is read-only).
    capability_note: str = ""

    @abstractmethod
    def read(self, session: Session, logical_id: str) -> StoredResource | None:
        """The current version, or None."""

    @abstractmethod
    def vread(self, session: Session, logical_id: str, version_id: int) -> StoredResource | None:
        """One version, or None."""

    @abstractmethod
    def read_many(self, session: Session, logical_ids: Iterable[str]) -> list[StoredResource]:
        """The current versions of those that exist (``_include``)."""

    def exists(self, session: Session, logical_ids: Iterable[str]) -> set[str]:
        """Which ids exist (reference checks). Override with a cheaper query where there is one."""
        return {r.logical_id for r in self.read_many(session, logical_ids)}

    @abstractmethod
    def create(self, session: Session, items: Sequence[NewResource]) -> list[StoredResource]:
        """Store version 1 of each item under its given id, in order."""

    @abstractmethod
    def update(
        self,
        session: Session,
        logical_id: str,
        body: dict[str, Any],
        index: Sequence[IndexEntry],
        *,
        expected_version: int | None = None,
    ) -> StoredResource | None:
        """Store a new version; None when *logical_id* does not exist (the API then creates it)."""

    @abstractmethod
    def search(self, session: Session, request: SearchRequest) -> SearchPage:
        """One page of current resources matching *request* (clauses, sort, count, offset)."""

    @abstractmethod
    def history(
        self,
        session: Session,
        logical_id: str | None,
        *,
        since: Any = None,
        offset: int = 0,
        count: int = 20,
    ) -> tuple[list[StoredResource], int]:
        """Versions newest first (of one resource, or of the type when *logical_id* is None), and
        how many there are."""


class StoredProvider(ResourceProvider):
    """Resources as versioned JSON in ``fhir_resources`` with the search index of
    ``fhir_search_index`` (:mod:`clinic.fhirstore`)."""

    def __init__(self, resource_type: str) -> None:
        self.resource_type = resource_type

    def read(self, session: Session, logical_id: str) -> StoredResource | None:
        return store.get(session, self.resource_type, logical_id)

    def vread(self, session: Session, logical_id: str, version_id: int) -> StoredResource | None:
        return store.get_version(session, self.resource_type, logical_id, version_id)

    def read_many(self, session: Session, logical_ids: Iterable[str]) -> list[StoredResource]:
        return store.get_many(session, self.resource_type, logical_ids)

    def exists(self, session: Session, logical_ids: Iterable[str]) -> set[str]:
        return store.existing_ids(session, self.resource_type, logical_ids)

    def create(self, session: Session, items: Sequence[NewResource]) -> list[StoredResource]:
        indexed = [
            i if i.index is not None else replace(i, index=index_entries(i.resource_type, i.body))
            for i in items
        ]
        return store.create_many(session, indexed)

    def update(
        self,
        session: Session,
        logical_id: str,
        body: dict[str, Any],
        index: Sequence[IndexEntry],
        *,
        expected_version: int | None = None,
    ) -> StoredResource | None:
        return store.update(
            session, self.resource_type, logical_id, body, index, expected_version=expected_version
        )

    def search(self, session: Session, request: SearchRequest) -> SearchPage:
        limit = request.count
        rows: list[StoredResource] = []
        if limit > 0:
            rows = store.search(
                session,
                self.resource_type,
                request.clauses,
                sort=request.sort,
                offset=request.offset,
                limit=limit + 1,  # one more tells whether a next page exists
            )
        has_more = len(rows) > limit
        rows = rows[:limit]
        total: int | None = None
        if request.total:
            total = store.count(session, self.resource_type, request.clauses)
        elif request.offset == 0 and not has_more:
            total = len(rows)
        return SearchPage(rows, has_more, total)

    def history(
        self,
        session: Session,
        logical_id: str | None,
        *,
        since: Any = None,
        offset: int = 0,
        count: int = 20,
    ) -> tuple[list[StoredResource], int]:
        return store.history(session, self.resource_type, logical_id, since=since, offset=offset, limit=count)


class ProviderRegistry:
    """The provider of each served type: the generic store unless replaced."""

    def __init__(self, providers: Mapping[str, ResourceProvider] | None = None) -> None:
        self._providers: dict[str, ResourceProvider] = {t: StoredProvider(t) for t in SERVED_TYPES}
        for provider in (providers or {}).values():
            self.replace(provider)

    def replace(self, provider: ResourceProvider) -> None:
        if provider.resource_type not in SERVED_TYPES:
            raise ValueError(f"{provider.resource_type} is not a served resource type")
        self._providers[provider.resource_type] = provider

    def get(self, resource_type: str) -> ResourceProvider | None:
        return self._providers.get(resource_type)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._providers)
