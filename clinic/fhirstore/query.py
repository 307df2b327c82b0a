"""Search criteria as plain values, and their translation into SQL over the search index.

The FHIR adapter parses a search URL (FHIR R4 search.html) into :class:`Clause` values; this module
turns them into SQL that reads only ``fhir_search_index`` and ``fhir_resources``' own columns.
Terms of one clause are OR-ed (a comma in the URL), clauses are AND-ed (repeated parameters).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    SQLColumnExpression,
    and_,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
)

from clinic.fhirstore.models import INDEX_VALUE_LENGTH, SEARCH_INDEX, FhirResource

#: Open ends of a date range (a Period without start or end).
DATE_MIN = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
DATE_MAX = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)

#: Parameters served from the resource row itself rather than from the index.
ID_PARAM = "_id"
LAST_UPDATED_PARAM = "_lastUpdated"


class ParamKind(StrEnum):
    """FHIR search parameter types we index (R4 search.html §3.1.1.4)."""

    TOKEN = "token"
    REFERENCE = "reference"
    STRING = "string"
    DATE = "date"
    URI = "uri"


class DatePrefix(StrEnum):
    """Comparison prefixes of number/date/quantity parameters (R4 search.html §3.1.1.4.2)."""

    EQ = "eq"
    NE = "ne"
    GT = "gt"
    LT = "lt"
    GE = "ge"
    LE = "le"
    SA = "sa"
    EB = "eb"


@dataclass(frozen=True)
class TokenTerm:
    """``[system]|[code]``: ``system`` None matches any system, "" only values without one;
    ``value`` None matches any value of that system. References use system = target type."""

    system: str | None
    value: str | None


@dataclass(frozen=True)
class StringTerm:
    """A normalised string: starts-with by default, anywhere with ``:contains``."""

    value: str
    contains: bool = False


@dataclass(frozen=True)
class DateTerm:
    """A prefixed date: the search value stands for the inclusive range ``start``..``end``."""

    prefix: DatePrefix
    start: dt.datetime
    end: dt.datetime


Term = TokenTerm | StringTerm | DateTerm


@dataclass(frozen=True)
class Clause:
    """One search parameter: its index name, its type, and OR-ed terms.

    ``negate`` is the token ``:not`` modifier; ``missing`` is ``:missing=true|false``
    (then ``terms`` is empty)."""

    param: str
    kind: ParamKind
    terms: tuple[Term, ...] = ()
    negate: bool = False
    missing: bool | None = None


@dataclass(frozen=True)
class SortKey:
    param: str
    kind: ParamKind
    descending: bool = False


def date_predicate(
    term: DateTerm, start: SQLColumnExpression[Any], end: SQLColumnExpression[Any]
) -> ColumnElement[bool]:
    """Whether a target range ``start..end`` matches *term*, as R4 search.html §3.1.1.4.2 words
    each prefix (inclusive ranges at the precision of each value)."""
    s0, s1 = term.start, term.end
    contained = and_(start >= s0, end <= s1)
    match term.prefix:
        case DatePrefix.EQ:
            return contained
        case DatePrefix.NE:
            return not_(contained)
        case DatePrefix.GT:
            return end > s1
        case DatePrefix.LT:
            return start < s0
        case DatePrefix.GE:
            return or_(end > s1, contained)
        case DatePrefix.LE:
            return or_(start < s0, contained)
        case DatePrefix.SA:
            return start > s1
        case DatePrefix.EB:
            return end < s0
    raise ValueError(f"unknown date prefix {term.prefix!r}")


def _cut(value: str) -> str:
    return value[:INDEX_VALUE_LENGTH]


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _index_term(idx: FromClause, term: Term) -> ColumnElement[bool]:
    if isinstance(term, TokenTerm):
        parts: list[ColumnElement[bool]] = []
        if term.value is not None:
            parts.append(idx.c.value == _cut(term.value))
        if term.system is not None:
            parts.append(idx.c.system == _cut(term.system))
        return and_(true(), *parts)
    if isinstance(term, StringTerm):
        pattern = _like_escape(_cut(term.value)) + "%"
        if term.contains:
            pattern = "%" + pattern
        return idx.c.value.like(pattern, escape="\\")
    return date_predicate(term, idx.c.date_start, idx.c.date_end)


def _own_column_clause(clause: Clause) -> ColumnElement[bool]:
    """``_id`` and ``_lastUpdated`` compare the resource row's own columns."""
    terms: list[ColumnElement[bool]] = []
    for term in clause.terms:
        if clause.param == ID_PARAM and isinstance(term, TokenTerm) and term.value is not None:
            terms.append(FhirResource.logical_id == term.value)
        elif clause.param == LAST_UPDATED_PARAM and isinstance(term, DateTerm):
            terms.append(date_predicate(term, FhirResource.last_updated, FhirResource.last_updated))
    condition = or_(false(), *terms)
    return not_(condition) if clause.negate else condition


def clause_condition(resource_type: str, clause: Clause) -> ColumnElement[bool]:
    """A condition on ``fhir_resources`` rows for one clause."""
    if clause.param in (ID_PARAM, LAST_UPDATED_PARAM):
        return _own_column_clause(clause)
    idx = SEARCH_INDEX.alias()
    base = [
        idx.c.resource_pk == FhirResource.id,
        idx.c.resource_type == resource_type,
        idx.c.param == clause.param,
    ]
    if clause.missing is not None:
        has_any = exists().where(*base)
        return not_(has_any) if clause.missing else has_any
    # Value rows have no date and date rows no value: saying which is the predicate of the
    # partial indexes (models.SEARCH_INDEX), so that the planners can use them.
    kind = idx.c.date_start.is_not(None) if clause.kind is ParamKind.DATE else idx.c.date_start.is_(None)
    matching = exists().where(*base, kind, or_(false(), *(_index_term(idx, t) for t in clause.terms)))
    return not_(matching) if clause.negate else matching


def _sort_expression(resource_type: str, key: SortKey) -> ColumnElement[Any]:
    column: SQLColumnExpression[Any]
    if key.param == LAST_UPDATED_PARAM:
        column = FhirResource.last_updated
    elif key.param == ID_PARAM:
        column = FhirResource.logical_id
    else:
        idx = SEARCH_INDEX.alias()
        agg: ColumnElement[Any]
        if key.kind is ParamKind.DATE:
            agg = func.max(idx.c.date_end) if key.descending else func.min(idx.c.date_start)
        else:
            agg = func.max(idx.c.value) if key.descending else func.min(idx.c.value)
        column = (
            select(agg)
            .where(
                idx.c.resource_pk == FhirResource.id,
                idx.c.resource_type == resource_type,
                idx.c.param == key.param,
            )
            .scalar_subquery()
        )
    return column.desc().nulls_last() if key.descending else column.asc().nulls_last()


def search_statement(
    resource_type: str, clauses: tuple[Clause, ...], sort: tuple[SortKey, ...] = ()
) -> Select[FhirResource]:
    """``SELECT`` of the matching current resources, in *sort* order then by storage order."""
    statement = select(FhirResource).where(FhirResource.resource_type == resource_type)
    for clause in clauses:
        statement = statement.where(clause_condition(resource_type, clause))
    order = [_sort_expression(resource_type, key) for key in sort]
    return statement.order_by(*order, FhirResource.id)


def count_statement(resource_type: str, clauses: tuple[Clause, ...]) -> Select[int]:
    statement = select(func.count(FhirResource.id)).where(FhirResource.resource_type == resource_type)
    for clause in clauses:
        statement = statement.where(clause_condition(resource_type, clause))
    return statement
