"""QIDO-RS, the Search transactions (PS3.18 §10.6), answered from the database.

Matching (PS3.4 C.2.2.2) runs in SQL on the indexed columns of ``clinic.imaging`` and
``clinic.patients``: single value, wildcard (``*`` and ``?``), UID list, date range, and
ModalitiesInStudy. Person names match case-insensitively (as Orthanc does); ``fuzzymatching=true``
also lets a pattern match the start of any name component. Keys we do not index are ignored with a
``Warning: 299`` header (PS3.18 §8.3.4.3, "not supported for matching").

Returned attributes (Tables 10.6.3-3 to -5) come from the same rows. The few required ones that
are not indexed (Study Time, Referring Physician's Name, Study ID, Bits Allocated, Number of
Frames) and ``includefield`` attributes beyond the indexed ones are read from the header of the
study's, series' or instance's stored file, cached per file version
(:class:`~integrations.dicom.dicomweb.json_model.MetadataCache`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from clinic.imaging.models import Instance, Series, Study
from clinic.patients.models import Patient
from integrations.dicom.dicomweb.json_model import (
    JsonObject,
    MetadataCache,
    date_value,
    element,
    person_name,
    tag_key,
)

#: Results per request when ``limit`` is not given, and the most a request may ask for.
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000

_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}\Z")
_DATE_RE = re.compile(r"\d{8}\Z")
#: Query parameters of PS3.18 §8.3.4 that are not attribute matches.
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching", "emptyvaluematching", "multiplevaluematching"}


class QueryError(ValueError):
    """A query parameter that cannot be understood (HTTP 400)."""


class Level(StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


_DEPTH = {Level.STUDY: 0, Level.SERIES: 1, Level.INSTANCE: 2}


class Match(Enum):
    """Matching types of PS3.4 C.2.2.2 that each key supports here."""

    UID_LIST = "uid-list"
    WILDCARD = "wildcard"
    CODE_LIST = "code-list"
    PERSON_NAME = "person-name"
    DATE_RANGE = "date-range"
    INTEGER = "integer"
    MODALITIES = "modalities"


@dataclass(frozen=True)
class Key:
    """A matching key: its attribute, its query level, its column and how it matches."""

    keyword: str
    tag: int
    vr: str
    level: Level
    column: Any
    match: Match


KEYS: tuple[Key, ...] = (
    Key("PatientName", 0x00100010, "PN", Level.STUDY, Patient.name, Match.PERSON_NAME),
    Key("PatientID", 0x00100020, "LO", Level.STUDY, Patient.identifier, Match.WILDCARD),
    Key("IssuerOfPatientID", 0x00100021, "LO", Level.STUDY, Patient.issuer, Match.WILDCARD),
    Key("PatientBirthDate", 0x00100030, "DA", Level.STUDY, Patient.birth_date, Match.DATE_RANGE),
    Key("PatientSex", 0x00100040, "CS", Level.STUDY, Patient.sex, Match.CODE_LIST),
    Key("StudyInstanceUID", 0x0020000D, "UI", Level.STUDY, Study.study_uid, Match.UID_LIST),
    Key("StudyDate", 0x00080020, "DA", Level.STUDY, Study.study_date, Match.DATE_RANGE),
    Key("AccessionNumber", 0x00080050, "SH", Level.STUDY, Study.accession_number, Match.WILDCARD),
    Key("StudyDescription", 0x00081030, "LO", Level.STUDY, Study.description, Match.WILDCARD),
    Key("ModalitiesInStudy", 0x00080061, "CS", Level.STUDY, Series.modality, Match.MODALITIES),
    Key("Modality", 0x00080060, "CS", Level.SERIES, Series.modality, Match.CODE_LIST),
    Key("SeriesInstanceUID", 0x0020000E, "UI", Level.SERIES, Series.series_uid, Match.UID_LIST),
    Key("SeriesNumber", 0x00200011, "IS", Level.SERIES, Series.series_number, Match.INTEGER),
    Key("SeriesDescription", 0x0008103E, "LO", Level.SERIES, Series.description, Match.WILDCARD),
    Key("BodyPartExamined", 0x00180015, "CS", Level.SERIES, Series.body_part, Match.CODE_LIST),
    Key("SOPInstanceUID", 0x00080018, "UI", Level.INSTANCE, Instance.sop_instance_uid, Match.UID_LIST),
    Key("SOPClassUID", 0x00080016, "UI", Level.INSTANCE, Instance.sop_class_uid, Match.UID_LIST),
    Key("InstanceNumber", 0x00200013, "IS", Level.INSTANCE, Instance.instance_number, Match.INTEGER),
)
_KEYS_BY_TAG = {k.tag: k for k in KEYS}

#: Required return attributes that the database does not index, read from a stored header.
HEADER_TAGS: dict[Level, frozenset[int]] = {
    # Study Time, Referring Physician's Name, Timezone Offset From UTC, Study ID
    Level.STUDY: frozenset({0x00080030, 0x00080090, 0x00080201, 0x00200010}),
    # Performed Procedure Step Start Date and Time ("if known")
    Level.SERIES: frozenset({0x00400244, 0x00400245}),
    # Bits Allocated, Number of Frames
    Level.INSTANCE: frozenset({0x00280100, 0x00280008}),
}
_ALWAYS_PRESENT = {0x00080030: "TM", 0x00080090: "PN", 0x00200010: "SH", 0x00280100: "US", 0x00280008: "IS"}


@dataclass
class Query:
    """A parsed QIDO-RS request: the target level, the path's scope, matches and controls."""

    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    matches: list[tuple[Key, str]] = field(default_factory=list)
    include: set[int] = field(default_factory=set)
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    fuzzy: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def levels(self) -> tuple[Level, ...]:
        """Levels whose attributes each result carries (PS3.18 §10.6.3.3.2-3)."""
        if self.level is Level.STUDY:
            return (Level.STUDY,)
        if self.level is Level.SERIES:
            return (Level.SERIES,) if self.study_uid else (Level.STUDY, Level.SERIES)
        if self.series_uid:
            return (Level.INSTANCE,)
        return (
            (Level.SERIES, Level.INSTANCE) if self.study_uid else (Level.STUDY, Level.SERIES, Level.INSTANCE)
        )


def attribute_tag(name: str) -> int | None:
    """A tag from an attribute keyword or eight hex digits (PS3.18 §8.3.4.1 ``attributeID``)."""
    if _TAG_RE.match(name):
        return int(name, 16)
    return tag_for_keyword(name)


def _integer(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise QueryError(f"{name} must be an integer") from exc
    if not low <= number <= high:
        raise QueryError(f"{name} must be between {low} and {high}")
    return number


def parse_query(
    level: Level,
    params: Sequence[tuple[str, str]],
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Query:
    """Parse the query string (PS3.18 §8.3.4); raises :class:`QueryError` on what it cannot read."""
    query = Query(level, study_uid, series_uid)
    for name, value in params:
        lowered = name.lower()
        if lowered in _CONTROL:
            _control(query, lowered, value)
            continue
        tag = attribute_tag(name)
        if tag is None:
            if "." in name:
                query.warnings.append(f"sequence matching is not supported: {name[:64]}")
            else:
                query.warnings.append(f"unknown query parameter ignored: {name[:64]}")
            continue
        key = _KEYS_BY_TAG.get(tag)
        if key is None or _DEPTH[key.level] > _DEPTH[level]:
            query.warnings.append(f"not supported for matching at this level: {name[:64]}")
            query.include.add(tag)  # PS3.18: a match key is also a return key
            continue
        query.matches.append((key, value))
    return query


def _control(query: Query, name: str, value: str) -> None:
    if name == "limit":
        query.limit = _integer("limit", value, 1, MAX_LIMIT)
    elif name == "offset":
        query.offset = _integer("offset", value, 0, 2**31 - 1)
    elif name == "fuzzymatching":
        if value.lower() not in ("true", "false"):
            raise QueryError("fuzzymatching must be true or false")
        query.fuzzy = value.lower() == "true"
    elif name == "includefield":
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item.lower() == "all":
                query.include_all = True
                continue
            tag = attribute_tag(item)
            if tag is None:
                raise QueryError(f"includefield {item[:64]!r} is neither a keyword nor a tag")
            query.include.add(tag)


# --- matching ---------------------------------------------------------------------------------


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _glob(pattern: str) -> str:
    return pattern.replace("[", "[[]")


def _wildcard(column: Any, pattern: str, dialect: str) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.4 wildcard matching, case-sensitive on both databases (SQLite's LIKE is not:
    GLOB is; its ``*`` and ``?`` are DICOM's)."""
    if dialect == "sqlite":
        return column.op("GLOB")(_glob(pattern))  # type: ignore[no-any-return]
    return column.like(_like(pattern), escape="\\")  # type: ignore[no-any-return]


def _values(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _date(text: str, name: str) -> dt.date | None:
    if not text:
        return None
    if not _DATE_RE.match(text):
        raise QueryError(f"{name}: dates are YYYYMMDD (PS3.5 DA), ranges YYYYMMDD-YYYYMMDD")
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError as exc:
        raise QueryError(f"{name}: {text} is not a date") from exc


def _date_range(column: Any, value: str, name: str) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.5 range matching: ``D``, ``D1-D2``, ``-D``, ``D-``."""
    low_text, dash, high_text = value.partition("-")
    low = _date(low_text.strip(), name)
    high = _date(high_text.strip(), name) if dash else low
    if low is None and high is None:
        raise QueryError(f"{name}: an empty range")
    clauses = [column >= low] if low else []
    clauses += [column <= high] if high else []
    return and_(*clauses)


def _person_name(column: Any, value: str, fuzzy: bool, dialect: str) -> ColumnElement[bool]:
    lowered, pattern = func.lower(column), value.lower()
    if not fuzzy:
        if "*" in pattern or "?" in pattern:
            return _wildcard(lowered, pattern, dialect)
        return lowered == pattern  # type: ignore[no-any-return]
    # fuzzymatching (PS3.18 §8.3.4.5): the pattern may match the start of any name component.
    stem = pattern.rstrip("*") + "*"
    return or_(*(_wildcard(lowered, prefix + stem, dialect) for prefix in ("", "*^", "*=", "* ")))


def match_clause(key: Key, value: str, fuzzy: bool, dialect: str) -> ColumnElement[bool] | None:
    """The SQL condition of one match key; ``None`` for universal matching (empty or ``*``)."""
    value = value.strip()
    if value in ("", "*"):
        return None
    name = key.keyword
    if key.match is Match.UID_LIST:
        return key.column.in_(_values(value))  # type: ignore[no-any-return]
    if key.match is Match.DATE_RANGE:
        return _date_range(key.column, value, name)
    if key.match is Match.INTEGER:
        return key.column == _integer(name, value, -(2**31), 2**31 - 1)  # type: ignore[no-any-return]
    if key.match is Match.PERSON_NAME:
        return _person_name(key.column, value, fuzzy, dialect)
    if key.match is Match.MODALITIES:
        return exists().where(Series.study_id == Study.id, Series.modality.in_(_values(value)))
    if key.match is Match.CODE_LIST and "*" not in value and "?" not in value:
        return key.column.in_(_values(value))  # type: ignore[no-any-return]
    if "*" in value or "?" in value:
        return _wildcard(key.column, value, dialect)
    return key.column == value  # type: ignore[no-any-return]


# --- the search -------------------------------------------------------------------------------

_STUDY_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = (
    Study.id,
    Study.study_uid,
    Study.study_date,
    Study.accession_number,
    Study.description,
    Patient.id,
    Patient.identifier,
    Patient.issuer,
    Patient.name,
    Patient.birth_date,
    Patient.sex,
)
_SERIES_COLUMNS = (
    Series.id,
    Series.series_uid,
    Series.modality,
    Series.description,
    Series.series_number,
    Series.body_part,
)
_INSTANCE_COLUMNS = (
    Instance.id,
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.instance_number,
    Instance.rows,
    Instance.columns,
    Instance.transfer_syntax_uid,
    Instance.file_path,
)


def _statement(query: Query, dialect: str) -> Select[Any]:
    columns: list[Any] = [*_STUDY_COLUMNS]
    if query.level is not Level.STUDY:
        columns += _SERIES_COLUMNS
    if query.level is Level.INSTANCE:
        columns += _INSTANCE_COLUMNS
    statement = select(*columns).select_from(Study).join(Patient, Patient.id == Study.patient_id)
    order: list[Any] = [Study.id]
    if query.level is not Level.STUDY:
        statement = statement.join(Series, Series.study_id == Study.id)
        order = [Study.id, Series.series_number, Series.id]
    if query.level is Level.INSTANCE:
        statement = statement.join(Instance, Instance.series_id == Series.id)
        order += [Instance.instance_number, Instance.id]
    if query.study_uid:
        statement = statement.where(Study.study_uid == query.study_uid)
    if query.series_uid:
        statement = statement.where(Series.series_uid == query.series_uid)
    for key, value in query.matches:
        clause = match_clause(key, value, query.fuzzy, dialect)
        if clause is not None:
            statement = statement.where(clause)
    return statement.order_by(*order).limit(query.limit).offset(query.offset)


@dataclass(frozen=True)
class SearchResult:
    results: list[JsonObject]
    patient_ids: set[int]
    warnings: list[str]


def search(session: Session, query: Query, base: str, data_dir: Path, cache: MetadataCache) -> SearchResult:
    """Run *query*; return the matches in the JSON model, best first as ordered above."""
    dialect = session.get_bind().dialect.name
    rows = session.execute(_statement(query, dialect)).mappings().all()
    if not rows:
        return SearchResult([], set(), query.warnings)
    study_ids = {r[Study.id] for r in rows}
    series_ids = {r[Series.id] for r in rows} if query.level is not Level.STUDY else set()
    counts = _Counts.load(session, query, study_ids, series_ids)
    results = []
    for row in rows:
        result: JsonObject = {}
        if Level.STUDY in query.levels:
            result.update(_study_attributes(row, counts, base))
        if Level.SERIES in query.levels:
            result.update(_series_attributes(row, counts, base))
        if Level.INSTANCE in query.levels:
            result.update(_instance_attributes(row, base))
        results.append(result)
    _add_header_attributes(session, query, rows, results, data_dir, cache)
    results = [dict(sorted(r.items())) for r in results]
    return SearchResult(results, {int(r[Patient.id]) for r in rows}, query.warnings)


@dataclass
class _Counts:
    study_series: dict[int, int] = field(default_factory=dict)
    study_instances: dict[int, int] = field(default_factory=dict)
    study_modalities: dict[int, list[str]] = field(default_factory=dict)
    series_instances: dict[int, int] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, query: Query, study_ids: set[int], series_ids: set[int]) -> _Counts:
        """Aggregates for the page's studies and series only (PS3.4 C.3.4 additional keys)."""
        counts = cls()
        if Level.STUDY in query.levels:
            for study_id, n_series, n_instances in session.execute(
                select(Series.study_id, func.count(func.distinct(Series.id)), func.count(Instance.id))
                .outerjoin(Instance, Instance.series_id == Series.id)
                .where(Series.study_id.in_(study_ids))
                .group_by(Series.study_id)
            ):
                counts.study_series[study_id] = n_series
                counts.study_instances[study_id] = n_instances
            for study_id, modality in session.execute(
                select(Series.study_id, Series.modality)
                .distinct()
                .where(Series.study_id.in_(study_ids))
                .order_by(Series.study_id, Series.modality)
            ):
                if modality:
                    counts.study_modalities.setdefault(study_id, []).append(modality)
        if Level.SERIES in query.levels:
            for series_id, n_instances in session.execute(
                select(Instance.series_id, func.count(Instance.id))
                .where(Instance.series_id.in_(series_ids))
                .group_by(Instance.series_id)
            ):
                counts.series_instances[series_id] = n_instances
        return counts


def _study_attributes(row: Any, counts: _Counts, base: str) -> JsonObject:
    study_id, uid = row[Study.id], row[Study.study_uid]
    name = person_name(row[Patient.name])
    attributes = {
        "00080005": element("CS", ["ISO_IR 192"]),  # the JSON model is UTF-8 (F.2)
        "00080020": element("DA", [date_value(row[Study.study_date])]),
        "00080050": element("SH", [row[Study.accession_number]]),
        "00080056": element("CS", ["ONLINE"]),
        "00080061": element("CS", counts.study_modalities.get(study_id, [])),
        "00081030": element("LO", [row[Study.description]]),
        "00081190": element("UR", [f"{base}/studies/{uid}"]),
        "00100010": element("PN", [name] if name else []),
        "00100020": element("LO", [row[Patient.identifier]]),
        "00100030": element("DA", [date_value(row[Patient.birth_date])]),
        "00100040": element("CS", [row[Patient.sex]]),
        "0020000D": element("UI", [uid]),
        "00201206": element("IS", [counts.study_series.get(study_id, 0)]),
        "00201208": element("IS", [counts.study_instances.get(study_id, 0)]),
    }
    if row[Patient.issuer]:
        attributes["00100021"] = element("LO", [row[Patient.issuer]])
    return attributes


def _series_attributes(row: Any, counts: _Counts, base: str) -> JsonObject:
    study, series = row[Study.study_uid], row[Series.series_uid]
    return {
        "00080060": element("CS", [row[Series.modality]]),
        "0008103E": element("LO", [row[Series.description]]),
        "00081190": element("UR", [f"{base}/studies/{study}/series/{series}"]),
        "00180015": element("CS", [row[Series.body_part]]),
        "0020000D": element("UI", [study]),
        "0020000E": element("UI", [series]),
        "00200011": element("IS", [row[Series.series_number]]),
        "00201209": element("IS", [counts.series_instances.get(row[Series.id], 0)]),
    }


def _instance_attributes(row: Any, base: str) -> JsonObject:
    study, series, sop = row[Study.study_uid], row[Series.series_uid], row[Instance.sop_instance_uid]
    return {
        "00080016": element("UI", [row[Instance.sop_class_uid]]),
        "00080018": element("UI", [sop]),
        "00080056": element("CS", ["ONLINE"]),
        "00081190": element("UR", [f"{base}/studies/{study}/series/{series}/instances/{sop}"]),
        "00083002": element("UI", [row[Instance.transfer_syntax_uid]]),
        "0020000D": element("UI", [study]),
        "0020000E": element("UI", [series]),
        "00200013": element("IS", [row[Instance.instance_number]]),
        "00280010": element("US", [row[Instance.rows]]),
        "00280011": element("US", [row[Instance.columns]]),
    }


def _representatives(session: Session, column: Any, ids: Iterable[int]) -> dict[int, str]:
    """The file of the first instance of each study or series (*column*: Series.study_id or
    Instance.series_id): where their unindexed attributes are read."""
    first = (
        select(column.label("owner"), func.min(Instance.id).label("first"))
        .select_from(Instance)
        .join(Series, Series.id == Instance.series_id)
        .where(column.in_(list(ids)))
        .group_by(column)
        .subquery()
    )
    rows = session.execute(
        select(first.c.owner, Instance.file_path).join(Instance, Instance.id == first.c.first)
    )
    return {owner: path for owner, path in rows}


def _add_header_attributes(
    session: Session,
    query: Query,
    rows: Sequence[Any],
    results: list[JsonObject],
    data_dir: Path,
    cache: MetadataCache,
) -> None:
    """Fill the unindexed required attributes and the extra includefields from stored headers."""
    indexed = {key for result in results[:1] for key in result}
    extra = {t for t in query.include if tag_key(t) not in indexed}
    own_level = query.levels[-1]
    for level in query.levels:
        tags = HEADER_TAGS[level] | (extra if level is own_level else frozenset())
        if query.include_all and level is own_level:
            tags |= HEADER_TAGS[level]
        if not tags:
            continue
        if level is Level.INSTANCE:
            files = {r[Instance.id]: r[Instance.file_path] for r in rows}
            owners = [r[Instance.id] for r in rows]
        elif level is Level.SERIES:
            owners = [r[Series.id] for r in rows]
            files = _representatives(session, Instance.series_id, set(owners))
        else:
            owners = [r[Study.id] for r in rows]
            files = _representatives(session, Series.study_id, set(owners))
        for result, owner in zip(results, owners, strict=True):
            result.update(_read_attributes(files.get(owner), frozenset(tags), data_dir, cache))


def _read_attributes(
    relative: str | None, tags: frozenset[int], data_dir: Path, cache: MetadataCache
) -> JsonObject:
    found: dict[str, Any] = {}
    if relative:
        path = (data_dir / relative).resolve()
        if path.is_relative_to(data_dir):
            try:
                found = dict(cache.attributes(path, tags))
            except (OSError, ValueError, EOFError):  # a missing or unreadable file: the DB answer stands
                found = {}
    for tag in tags:  # required (R) keys are present even when empty
        if tag_key(tag) not in found and tag in _ALWAYS_PRESENT:
            found[tag_key(tag)] = element(_ALWAYS_PRESENT[tag])
    return found
