"""Generic storage of FHIR resources: current version, every version, a search index, and claims.

The tables hold plain JSON and plain index rows; what a resource *means* (its search parameters,
its bindings) is known only to the FHIR adapter (``integrations.fhir``), which computes the index
rows at write time so that a search never scans JSON (FHIR R4 §3.1.1 search, http.html §3.1.0.3).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Column, Index, Integer, String, Table, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow

#: Longest token/string value kept in the index; longer values are cut (and so are search values,
#: so that a long identifier still finds itself, at worst with others sharing its first 255 chars).
INDEX_VALUE_LENGTH = 255


class FhirResource(Base):
    """The current version of one resource (``resource_type/logical_id``)."""

    __tablename__ = "fhir_resources"
    __table_args__ = (
        UniqueConstraint("resource_type", "logical_id", name="uq_fhir_resources_type_logical_id"),
        Index("ix_fhir_resources_type_last_updated", "resource_type", "last_updated"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    #: Resource.id: ``[A-Za-z0-9\-\.]{1,64}`` (FHIR R4 §2.24.0.1 datatype id).
    logical_id: Mapped[str] = mapped_column(String(64))
    #: Resource.meta.versionId as an integer; ETag ``W/"<version_id>"``.
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: The resource as JSON text, with its id and meta set.
    content: Mapped[str] = mapped_column(Text)
    #: The interaction that wrote this version: "POST" (create) or "PUT" (update).
    method: Mapped[str] = mapped_column(String(8), default="POST")


class FhirResourceVersion(Base):
    """The versions a resource had before its current one (vread, ``_history``). The current
    version lives only in ``fhir_resources``: a create writes one row, not two, and an update
    moves the version it replaces here (the unique key refuses a second writer of the same one)."""

    __tablename__ = "fhir_resource_versions"
    __table_args__ = (
        UniqueConstraint("resource_pk", "version_id", name="uq_fhir_resource_versions_resource_version"),
        Index("ix_fhir_resource_versions_type_last_updated", "resource_type", "last_updated"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``fhir_resources.id``; written only together with that row, in the same transaction (no
    #: foreign key, for the reason given at :data:`SEARCH_INDEX`).
    resource_pk: Mapped[int] = mapped_column(Integer)
    resource_type: Mapped[str] = mapped_column(String(64))
    logical_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: The interaction that wrote it: "POST" (create) or "PUT" (update).
    method: Mapped[str] = mapped_column(String(8))
    content: Mapped[str] = mapped_column(Text)


#: One indexed value of one search parameter of a resource's current version. A plain table,
#: not an entity: rows are written in bulk and read only inside search SQL.
#:
#: token: ``system``/``value`` (code, Identifier, Coding, boolean); reference: ``system`` = target
#: type, ``value`` = target id; string: ``value`` normalised (lower case, no accents); date:
#: ``date_start``/``date_end``, the inclusive range the value stands for at its precision.
#:
#: ``resource_pk`` is ``fhir_resources.id``. No foreign key and no surrogate key: the rows are
#: derived from the resource and rewritten with it (clinic.fhirstore.service); the per-row key
#: check and the id sequence with its index cost 40 % of a bulk write's database time (100 vital
#: signs, 500 index rows, PostgreSQL: 33 → 25 ms without the foreign key, 17 → 14 ms without the id).
SEARCH_INDEX = Table(
    "fhir_search_index",
    Base.metadata,
    Column("resource_pk", Integer, nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(INDEX_VALUE_LENGTH), nullable=False, default=""),
    Column("value", String(INDEX_VALUE_LENGTH), nullable=False, default=""),
    Column("date_start", UTCDateTime, nullable=True),
    Column("date_end", UTCDateTime, nullable=True),
    # Partial: a row is a value (token, reference, string, uri) or a date range, never both, so
    # each row enters one of these two; queries repeat the predicate (clinic.fhirstore.query)
    # so that the planners use them.
    Index(
        "ix_fhir_search_index_token",
        "resource_type",
        "param",
        "value",
        "system",
        postgresql_where=text("date_start IS NULL"),
        sqlite_where=text("date_start IS NULL"),
    ),
    Index(
        "ix_fhir_search_index_date",
        "resource_type",
        "param",
        "date_start",
        "date_end",
        postgresql_where=text("date_start IS NOT NULL"),
        sqlite_where=text("date_start IS NOT NULL"),
    ),
    # Covering: once a selective parameter has found candidates, every other clause of the
    # search is checked in this index alone (no table access per candidate and clause).
    Index(
        "ix_fhir_search_index_resource",
        "resource_pk",
        "param",
        "value",
        "system",
        "date_start",
        "date_end",
    ),
)


class FhirConditionalClaim(Base):
    """Which resource a conditional create (``If-None-Exist``) or conditional update made for
    its search criteria. The unique key makes the database refuse a second resource for the same
    criteria when identical requests race (FHIR R4 http.html §3.1.0.8 conditional create)."""

    __tablename__ = "fhir_conditional_claims"
    __table_args__ = (
        UniqueConstraint("resource_type", "criteria_hash", name="uq_fhir_conditional_claims_type_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    #: SHA-256 (hex) of the normalised criteria (parameters sorted, URL-encoded).
    criteria_hash: Mapped[str] = mapped_column(String(64))
    #: The claimed resource's id. No foreign key: a domain-backed resource type (patients,
    #: observations, ...) claims its criteria here too, without a row in ``fhir_resources``.
    logical_id: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
