"""Writing and reading stored FHIR resources: versions, index rows and conditional-create claims.

Part of the caller's unit of work (nothing here commits). Concurrency is settled by the database:
``(resource_type, logical_id)`` and ``(resource, version)`` are unique, an update locks the current
row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions start with ``BEGIN IMMEDIATE``)
and compares versions, and a conditional create claims its criteria in a unique table.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import String, Table, any_, delete, func, insert, select, union_all
from sqlalchemy import cast as cast_
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.fhirstore.models import (
    INDEX_VALUE_LENGTH,
    SEARCH_INDEX,
    FhirConditionalClaim,
    FhirResource,
    FhirResourceVersion,
)
from clinic.fhirstore.query import Clause, SortKey, count_statement, search_statement

CREATE = "POST"
UPDATE = "PUT"

# Core tables for the multi-row INSERTs: SQLAlchemy's "insertmanyvalues" batches them (one
# statement per ~1000 rows) where the ORM bulk path sends a statement per row.
_RESOURCES = cast(Table, FhirResource.__table__)
_VERSIONS = cast(Table, FhirResourceVersion.__table__)
_INDEX = SEARCH_INDEX
_CLAIMS = cast(Table, FhirConditionalClaim.__table__)


class StoreError(Exception):
    """Base of the FHIR store's errors."""


class VersionConflictError(StoreError):
    """The resource's current version is not the one the caller expected (``If-Match``)."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"expected version {expected}, current version is {current}")
        self.expected = expected
        self.current = current


@dataclass(frozen=True)
class IndexEntry:
    """One value of one search parameter (see :data:`~clinic.fhirstore.models.SEARCH_INDEX`)."""

    param: str
    system: str = ""
    value: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None


@dataclass(frozen=True)
class StoredResource:
    """One version of one resource, as stored."""

    resource_type: str
    logical_id: str
    version_id: int
    last_updated: dt.datetime
    content: str
    method: str = CREATE
    pk: int = 0

    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.content)
        return parsed


@dataclass(frozen=True)
class NewResource:
    """A resource to create: its JSON body (id and meta are set here) and its index entries."""

    resource_type: str
    logical_id: str
    body: dict[str, Any]
    #: None: not computed yet (the provider computes it if it stores this body as given).
    index: Sequence[IndexEntry] | None = field(default_factory=tuple)
    #: "PUT" when an update creates the resource (update as create).
    method: str = "POST"


def instant(moment: dt.datetime) -> str:
    """A FHIR ``instant`` (R4 datatypes §2.24.0.1): UTC, microseconds, ``Z``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _stamped(
    resource_type: str, logical_id: str, version: int, now: dt.datetime, body: dict[str, Any]
) -> str:
    """The body as JSON text with Resource.id and Resource.meta.versionId/lastUpdated set."""
    meta = dict(body.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(now)
    rest = {k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")}
    stamped = {"resourceType": resource_type, "id": logical_id, "meta": meta, **rest}
    return json.dumps(stamped, ensure_ascii=False, separators=(",", ":"))


def _stored(row: FhirResource) -> StoredResource:
    return StoredResource(
        row.resource_type, row.logical_id, row.version_id, row.last_updated, row.content, row.method, row.id
    )


def _index_rows(resource_type: str, pk: int, entries: Iterable[IndexEntry]) -> list[dict[str, Any]]:
    return [
        {
            "resource_pk": pk,
            "resource_type": resource_type,
            "param": e.param,
            "system": e.system[:INDEX_VALUE_LENGTH],
            "value": e.value[:INDEX_VALUE_LENGTH],
            "date_start": e.start,
            "date_end": e.end,
        }
        for e in entries
    ]


# --- reads ------------------------------------------------------------------------------------


def get(
    session: Session, resource_type: str, logical_id: str, *, for_update: bool = False
) -> StoredResource | None:
    """The current version, or None. *for_update* locks the row until the transaction ends."""
    statement = select(FhirResource).where(
        FhirResource.resource_type == resource_type, FhirResource.logical_id == logical_id
    )
    if for_update:
        statement = statement.with_for_update()
    row = session.scalars(statement).one_or_none()
    return _stored(row) if row is not None else None


def get_version(
    session: Session, resource_type: str, logical_id: str, version_id: int
) -> StoredResource | None:
    current = get(session, resource_type, logical_id)
    if current is None or current.version_id == version_id:
        return current
    row = session.scalars(
        select(FhirResourceVersion).where(
            FhirResourceVersion.resource_pk == current.pk, FhirResourceVersion.version_id == version_id
        )
    ).one_or_none()
    if row is None:
        return None
    return StoredResource(
        row.resource_type, row.logical_id, row.version_id, row.last_updated, row.content, row.method
    )


def _among(session: Session, ids: list[str]) -> Any:
    """``logical_id`` is one of *ids*. PostgreSQL gets one array parameter (``= ANY``): a long
    ``IN`` list, once psycopg prepares the statement (its fifth run), was planned generically
    as a scan of every resource of the type with the list as a filter, ~4 s for 2,000 ids among
    100,000 (a sync's pages); with the array it stays a look-up of the unique index."""
    if session.get_bind().dialect.name == "postgresql":
        return FhirResource.logical_id == any_(cast_(ids, ARRAY(String)))
    return FhirResource.logical_id.in_(ids)


def get_many(session: Session, resource_type: str, logical_ids: Iterable[str]) -> list[StoredResource]:
    ids = sorted(set(logical_ids))
    if not ids:
        return []
    rows = session.scalars(
        select(FhirResource)
        .where(FhirResource.resource_type == resource_type, _among(session, ids))
        .order_by(FhirResource.id)
    )
    return [_stored(r) for r in rows]


def existing_ids(session: Session, resource_type: str, logical_ids: Iterable[str]) -> set[str]:
    """Which of *logical_ids* exist (one query, for reference checks)."""
    ids = sorted(set(logical_ids))
    if not ids:
        return set()
    return set(
        session.scalars(
            select(FhirResource.logical_id).where(
                FhirResource.resource_type == resource_type, _among(session, ids)
            )
        )
    )


def search(
    session: Session,
    resource_type: str,
    clauses: tuple[Clause, ...],
    *,
    sort: tuple[SortKey, ...] = (),
    offset: int = 0,
    limit: int = 20,
) -> list[StoredResource]:
    statement = search_statement(resource_type, clauses, sort).offset(offset).limit(limit)
    return [_stored(r) for r in session.scalars(statement)]


def count(session: Session, resource_type: str, clauses: tuple[Clause, ...]) -> int:
    return int(session.scalar(count_statement(resource_type, clauses)) or 0)


def history(
    session: Session,
    resource_type: str,
    logical_id: str | None = None,
    *,
    since: dt.datetime | None = None,
    offset: int = 0,
    limit: int = 20,
) -> tuple[list[StoredResource], int]:
    """Versions, newest first (FHIR R4 http.html §3.1.0.11), and how many there are in all:
    the current ones and the superseded ones together."""
    parts = []
    for table in (FhirResource, FhirResourceVersion):
        conditions = [table.resource_type == resource_type]
        if logical_id is not None:
            conditions.append(table.logical_id == logical_id)
        if since is not None:
            conditions.append(table.last_updated >= since)
        parts.append(
            select(
                table.resource_type,
                table.logical_id,
                table.version_id,
                table.last_updated,
                table.content,
                table.method,
            ).where(*conditions)
        )
    versions = union_all(*parts).subquery()
    total = int(session.scalar(select(func.count()).select_from(versions)) or 0)
    rows = session.execute(
        select(versions)
        .order_by(versions.c.last_updated.desc(), versions.c.version_id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [StoredResource(*row) for row in rows], total


# --- writes -----------------------------------------------------------------------------------


def create_many(
    session: Session, items: Sequence[NewResource], now: dt.datetime | None = None
) -> list[StoredResource]:
    """Insert version 1 of each item with its index rows, in bulk.

    An id that exists already raises ``IntegrityError`` (the unique key); run it in a savepoint
    when the caller wants to recover. PostgreSQL takes the rows by ``COPY``; other databases by
    multi-row INSERTs."""
    if not items:
        return []
    now = now or utcnow()
    contents = [_stamped(i.resource_type, i.logical_id, 1, now, i.body) for i in items]
    if len(items) >= COPY_THRESHOLD and _copies(session):
        pks = _copy_rows(session, items, contents, now)
    else:
        pks = _insert_rows(session, items, contents, now)
    return [
        StoredResource(i.resource_type, i.logical_id, 1, now, c, i.method, pk)
        for i, c, pk in zip(items, contents, pks, strict=True)
    ]


#: From this many resources on, PostgreSQL gets COPY. Measured here (100 vital signs, 500 index
#: rows): COPY ~30 ms, multi-row INSERT ~45-90 ms; for one resource INSERT is as fast.
COPY_THRESHOLD = 8


def _copies(session: Session) -> bool:
    bind = session.get_bind()
    return bind.dialect.name == "postgresql" and bind.dialect.driver == "psycopg"


def _insert_rows(
    session: Session, items: Sequence[NewResource], contents: list[str], now: dt.datetime
) -> list[int]:
    rows = [
        {
            "resource_type": i.resource_type,
            "logical_id": i.logical_id,
            "version_id": 1,
            "last_updated": now,
            "content": c,
            "method": i.method,
        }
        for i, c in zip(items, contents, strict=True)
    ]
    result = session.execute(
        insert(_RESOURCES).returning(_RESOURCES.c.id, sort_by_parameter_order=True), rows
    )
    pks = list(result.scalars())
    index = [
        r for i, pk in zip(items, pks, strict=True) for r in _index_rows(i.resource_type, pk, i.index or ())
    ]
    if index:
        session.execute(insert(_INDEX), index)
    return pks


_COPY_RESOURCES = (
    "COPY fhir_resources (id, resource_type, logical_id, version_id, last_updated, content, method) "
    "FROM STDIN"
)
_COPY_INDEX = (
    "COPY fhir_search_index (resource_pk, resource_type, param, system, value, date_start, date_end) "
    "FROM STDIN"
)


def _copy_rows(
    session: Session, items: Sequence[NewResource], contents: list[str], now: dt.datetime
) -> list[int]:
    """The resources and their index rows by PostgreSQL ``COPY`` on the session's own connection
    (same transaction); ids come from the table's sequence first, so that index rows can name them."""
    connection = session.connection()
    driver = connection.connection.driver_connection
    dbapi = connection.dialect.dbapi
    try:
        with driver.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('fhir_resources', 'id')) FROM generate_series(1, %s)",
                (len(items),),
            )
            pks = [int(row[0]) for row in cursor.fetchall()]
            with cursor.copy(_COPY_RESOURCES) as copy:
                for pk, i, c in zip(pks, items, contents, strict=True):
                    copy.write_row((pk, i.resource_type, i.logical_id, 1, now, c, i.method))
            with cursor.copy(_COPY_INDEX) as copy:
                for pk, i in zip(pks, items, strict=True):
                    for e in i.index or ():
                        copy.write_row(
                            (
                                pk,
                                i.resource_type,
                                e.param,
                                e.system[:INDEX_VALUE_LENGTH],
                                e.value[:INDEX_VALUE_LENGTH],
                                e.start,
                                e.end,
                            )
                        )
    except dbapi.IntegrityError as exc:  # type: ignore[union-attr]
        # The same exception the INSERT path raises, so that callers recover the same way.
        raise IntegrityError("COPY fhir_resources", None, exc) from exc
    return pks


def update(
    session: Session,
    resource_type: str,
    logical_id: str,
    body: dict[str, Any],
    index: Sequence[IndexEntry],
    *,
    expected_version: int | None = None,
    now: dt.datetime | None = None,
) -> StoredResource | None:
    """Write a new version of an existing resource; None when it does not exist.

    Raises :class:`VersionConflictError` when *expected_version* (``If-Match``) is not current."""
    current = get(session, resource_type, logical_id, for_update=True)
    if current is None:
        return None
    if expected_version is not None and expected_version != current.version_id:
        raise VersionConflictError(expected_version, current.version_id)
    now = now or utcnow()
    version = current.version_id + 1
    content = _stamped(resource_type, logical_id, version, now, body)
    # The version being replaced moves to the history table; its unique (resource, version) key
    # refuses a second writer of the same version, should one get past the row lock.
    session.execute(
        insert(_VERSIONS),
        [
            {
                "resource_pk": current.pk,
                "resource_type": resource_type,
                "logical_id": logical_id,
                "version_id": current.version_id,
                "last_updated": current.last_updated,
                "method": current.method,
                "content": current.content,
            }
        ],
    )
    changed = session.execute(
        sql_update(FhirResource)
        .where(FhirResource.id == current.pk, FhirResource.version_id == current.version_id)
        .values(version_id=version, last_updated=now, content=content, method=UPDATE)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise VersionConflictError(current.version_id, current.version_id + 1)
    session.execute(delete(_INDEX).where(_INDEX.c.resource_pk == current.pk))
    rows = _index_rows(resource_type, current.pk, index)
    if rows:
        session.execute(insert(_INDEX), rows)
    return StoredResource(resource_type, logical_id, version, now, content, UPDATE, current.pk)


# --- conditional-create claims -----------------------------------------------------------------


def claimed_id(session: Session, resource_type: str, criteria_hash: str) -> str | None:
    """The id of the resource that claimed these criteria, if any."""
    return session.scalar(
        select(FhirConditionalClaim.logical_id).where(
            FhirConditionalClaim.resource_type == resource_type,
            FhirConditionalClaim.criteria_hash == criteria_hash,
        )
    )


def claim(session: Session, resource_type: str, criteria_hash: str, logical_id: str) -> None:
    """Claim *criteria_hash* for *logical_id*; ``IntegrityError`` when another request holds it."""
    session.execute(
        insert(_CLAIMS),
        [{"resource_type": resource_type, "criteria_hash": criteria_hash, "logical_id": logical_id}],
    )


def move_claim(session: Session, resource_type: str, criteria_hash: str, old_id: str, new_id: str) -> bool:
    """Hand a stale claim (its resource no longer matches) to *new_id*, only if it still names
    *old_id* (compare-and-set: two racing requests cannot both take it)."""
    result = session.execute(
        sql_update(FhirConditionalClaim)
        .where(
            FhirConditionalClaim.resource_type == resource_type,
            FhirConditionalClaim.criteria_hash == criteria_hash,
            FhirConditionalClaim.logical_id == old_id,
        )
        .values(logical_id=new_id, claimed_at=utcnow())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
