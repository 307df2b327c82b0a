"""Search parameters: which we serve per type, their index entries, and parsing of search URLs.

The parameters are the R4 base ones (http://hl7.org/fhir/R4/searchparameter-registry.html) the
platform's clients use. Index entries are computed when a resource is written (:func:`index_entries`)
and searched by :mod:`clinic.fhirstore.query`; nothing scans JSON at query time.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from clinic.fhirstore.query import (
    DATE_MAX,
    DATE_MIN,
    ID_PARAM,
    LAST_UPDATED_PARAM,
    Clause,
    DatePrefix,
    DateTerm,
    ParamKind,
    SortKey,
    StringTerm,
    Term,
    TokenTerm,
)
from clinic.fhirstore.service import IndexEntry
from integrations.fhir.outcome import IssueType, bad_request
from integrations.fhir.validation import RELATIVE_REFERENCE

DEFAULT_COUNT = 20
MAX_COUNT = 1000


@dataclass(frozen=True)
class SearchParam:
    """One search parameter of one type.

    ``paths``: dotted element paths (choice types spelled out: ``effectiveDateTime``); ``index``:
    the index name the values are kept under (``patient`` shares ``subject``'s entries, restricted
    to ``target`` Patient)."""

    name: str
    kind: ParamKind
    paths: tuple[str, ...]
    index: str = ""
    target: str | None = None
    description: str = ""

    @property
    def index_name(self) -> str:
        return self.index or self.name

    @property
    def extracts(self) -> bool:
        """Aliases (``patient`` of ``subject``) read another parameter's entries."""
        return not self.index


def _p(name: str, kind: ParamKind, *paths: str, index: str = "", target: str | None = None) -> SearchParam:
    return SearchParam(name, kind, paths, index, target)


T, R, S, D, U = ParamKind.TOKEN, ParamKind.REFERENCE, ParamKind.STRING, ParamKind.DATE, ParamKind.URI
IDENTIFIER = _p("identifier", T, "identifier")


def _subject_params(path: str = "subject") -> tuple[SearchParam, ...]:
    return (_p("subject", R, path), _p("patient", R, path, index="subject", target="Patient"))


SEARCH_PARAMS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        IDENTIFIER,
        _p("name", S, "name"),
        _p("family", S, "name.family"),
        _p("given", S, "name.given"),
        _p("birthdate", D, "birthDate"),
        _p("gender", T, "gender"),
        _p("active", T, "active"),
    ),
    "Encounter": (
        IDENTIFIER,
        *_subject_params(),
        _p("status", T, "status"),
        _p("class", T, "class"),
        _p("type", T, "type"),
        _p("date", D, "period"),
        _p("based-on", R, "basedOn"),
    ),
    "Observation": (
        IDENTIFIER,
        *_subject_params(),
        _p("encounter", R, "encounter"),
        _p("code", T, "code"),
        _p("category", T, "category"),
        _p("status", T, "status"),
        _p("date", D, "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _p("based-on", R, "basedOn"),
        _p("has-member", R, "hasMember"),
    ),
    "ServiceRequest": (
        IDENTIFIER,
        *_subject_params(),
        _p("encounter", R, "encounter"),
        _p("code", T, "code"),
        _p("category", T, "category"),
        _p("status", T, "status"),
        _p("intent", T, "intent"),
        _p("priority", T, "priority"),
        _p("authored", D, "authoredOn"),
        _p("occurrence", D, "occurrenceDateTime", "occurrencePeriod"),
    ),
    "ImagingStudy": (
        IDENTIFIER,
        *_subject_params(),
        _p("encounter", R, "encounter"),
        _p("status", T, "status"),
        _p("started", D, "started"),
        _p("modality", T, "series.modality"),
        _p("basedon", R, "basedOn"),
    ),
    "DiagnosticReport": (
        IDENTIFIER,
        *_subject_params(),
        _p("encounter", R, "encounter"),
        _p("code", T, "code"),
        _p("category", T, "category"),
        _p("status", T, "status"),
        _p("date", D, "effectiveDateTime", "effectivePeriod"),
        _p("issued", D, "issued"),
        _p("based-on", R, "basedOn"),
        _p("result", R, "result"),
        _p("imaging-study", R, "imagingStudy"),
    ),
    "Questionnaire": (
        IDENTIFIER,
        _p("url", U, "url"),
        _p("status", T, "status"),
        _p("name", S, "name"),
        _p("title", S, "title"),
        _p("version", T, "version"),
        _p("date", D, "date"),
    ),
    "QuestionnaireResponse": (
        IDENTIFIER,
        *_subject_params(),
        _p("encounter", R, "encounter"),
        _p("questionnaire", U, "questionnaire"),
        _p("status", T, "status"),
        _p("authored", D, "authored"),
    ),
    "Schedule": (
        IDENTIFIER,
        _p("actor", R, "actor"),
        _p("active", T, "active"),
        _p("date", D, "planningHorizon"),
        _p("service-type", T, "serviceType"),
    ),
    "Slot": (
        IDENTIFIER,
        _p("schedule", R, "schedule"),
        _p("status", T, "status"),
        _p("start", D, "start"),
        _p("service-type", T, "serviceType"),
    ),
    "Appointment": (
        IDENTIFIER,
        _p("actor", R, "participant.actor"),
        _p("patient", R, "participant.actor", index="actor", target="Patient"),
        _p("status", T, "status"),
        _p("date", D, "start"),
        _p("slot", R, "slot"),
        _p("based-on", R, "basedOn"),
    ),
}

#: Parameters every type has, served from the resource row.
COMMON_PARAMS = (
    SearchParam(ID_PARAM, ParamKind.TOKEN, ("id",)),
    SearchParam(LAST_UPDATED_PARAM, ParamKind.DATE, ("meta.lastUpdated",)),
)

#: Result parameters we honour (R4 search.html §3.1.1.5); anything else starting with "_" is refused.
RESULT_PARAMS = frozenset(
    # _totalMethod: fhirpy's count() sends it (an Aidbox parameter); _count=0 already counts.
    {"_count", "_offset", "_sort", "_include", "_total", "_summary", "_format", "_pretty", "_totalMethod"}
)


def params_of(resource_type: str) -> dict[str, SearchParam]:
    return {p.name: p for p in (*COMMON_PARAMS, *SEARCH_PARAMS.get(resource_type, ()))}


# --- index entries ------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Case- and accent-insensitive form of a string (R4 search.html §3.1.1.4.8)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _values(obj: Any, parts: Sequence[str]) -> Iterator[Any]:
    if isinstance(obj, list):
        for item in obj:
            yield from _values(item, parts)
        return
    if not parts:
        if obj is not None:
            yield obj
        return
    if isinstance(obj, dict):
        child = obj.get(parts[0])
        if child is not None:
            yield from _values(child, parts[1:])


def _tokens(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, str):
        yield "", value
    elif isinstance(value, dict):
        if "coding" in value:  # CodeableConcept
            for coding in value.get("coding") or ():
                if isinstance(coding, dict) and coding.get("code"):
                    yield str(coding.get("system") or ""), str(coding["code"])
        elif value.get("code"):  # Coding
            yield str(value.get("system") or ""), str(value["code"])
        elif value.get("value"):  # Identifier
            yield str(value.get("system") or ""), str(value["value"])


def reference_target(reference: str) -> tuple[str, str]:
    """(type, id) of a literal reference; ("", reference) when it is not ``Type/id``."""
    match = RELATIVE_REFERENCE.match(reference)
    if match:
        return match["type"], match["id"]
    return "", reference


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):  # HumanName, Address
        for key in ("text", "family", "given", "prefix", "suffix", "line", "city", "state", "postalCode"):
            part = value.get(key)
            for text in part if isinstance(part, list) else [part]:
                if isinstance(text, str):
                    yield text


def _dates(value: Any) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    if isinstance(value, str):
        parsed = date_range(value)
        if parsed is not None:
            yield parsed
    elif isinstance(value, dict):  # Period
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        if start or end:
            yield (start[0] if start else DATE_MIN), (end[1] if end else DATE_MAX)


@functools.cache
def _extractors(resource_type: str) -> tuple[tuple[str, ParamKind, str, tuple[str, ...]], ...]:
    """(param, kind, first element, rest of the path) of every stored parameter of a type."""
    return tuple(
        (param.name, param.kind, head, tuple(rest))
        for param in SEARCH_PARAMS.get(resource_type, ())
        if param.extracts
        for head, *rest in (path.split(".") for path in param.paths)
    )


def index_entries(resource_type: str, body: dict[str, Any]) -> list[IndexEntry]:
    """Every index entry of *body* for the search parameters of its type."""
    entries: list[IndexEntry] = []
    for name, kind, head, rest in _extractors(resource_type):
        top = body.get(head)
        if top is None:
            continue  # most paths are absent from any one resource: skip them cheaply
        for value in _values(top, rest):
            if kind is ParamKind.TOKEN:
                entries += [IndexEntry(name, system=s, value=v) for s, v in _tokens(value)]
            elif kind is ParamKind.REFERENCE:
                if isinstance(value, dict) and isinstance(value.get("reference"), str):
                    target_type, target_id = reference_target(value["reference"])
                    entries.append(IndexEntry(name, system=target_type, value=target_id))
            elif kind is ParamKind.STRING:
                entries += [IndexEntry(name, value=normalise(s)) for s in _strings(value)]
            elif kind is ParamKind.DATE:
                entries += [IndexEntry(name, start=a, end=b) for a, b in _dates(value)]
            elif kind is ParamKind.URI and isinstance(value, str):
                entries.append(IndexEntry(name, value=value))
    return entries


def references_at(param: SearchParam, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, id) of the references *param* points at in *body* (``_include``)."""
    found = []
    for path in param.paths:
        for value in _values(body, path.split(".")):
            if isinstance(value, dict) and isinstance(value.get("reference"), str):
                target = reference_target(value["reference"])
                if target[0] and (param.target is None or target[0] == param.target):
                    found.append(target)
    return found


# --- dates --------------------------------------------------------------------------------------

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _add_months(moment: dt.datetime, months: int) -> dt.datetime:
    total = moment.month - 1 + months
    return moment.replace(year=moment.year + total // 12, month=total % 12 + 1)


def date_range(text: str) -> tuple[dt.datetime, dt.datetime] | None:
    """The inclusive UTC range a FHIR date/dateTime/instant stands for at its precision
    (``2024`` → the whole year). A time without a zone is taken as UTC."""
    match = _DATE.match(text.strip())
    if match is None:
        return None
    g = match.groupdict()
    try:
        tz = dt.UTC
        if g["tz"] and g["tz"] != "Z":
            sign = 1 if g["tz"][0] == "+" else -1
            tz = dt.timezone(sign * dt.timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][4:6])))
        micro = int((g["f"] or "0")[:6].ljust(6, "0"))
        start = dt.datetime(
            int(g["y"]),
            int(g["m"] or 1),
            int(g["d"] or 1),
            int(g["H"] or 0),
            int(g["M"] or 0),
            int(g["S"] or 0),
            micro,
            tzinfo=tz,
        ).astimezone(dt.UTC)
    except ValueError:
        return None
    tick = dt.timedelta(microseconds=1)
    if g["f"]:
        end = start
    elif g["S"]:
        end = start + dt.timedelta(seconds=1) - tick
    elif g["M"]:
        end = start + dt.timedelta(minutes=1) - tick
    elif g["d"]:
        end = start + dt.timedelta(days=1) - tick
    elif g["m"]:
        end = _add_months(start, 1) - tick
    else:
        end = start.replace(year=start.year + 1) - tick if start.year < 9999 else DATE_MAX
    return start, end


# --- parsing search URLs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Include:
    """``_include=Type:param[:target]``."""

    param: SearchParam
    target: str | None


@dataclass(frozen=True)
class SearchRequest:
    resource_type: str
    clauses: tuple[Clause, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = DEFAULT_COUNT
    offset: int = 0
    includes: tuple[Include, ...] = ()
    total: bool = False
    #: The criteria as given (name, value), for paging links and conditional-create claims.
    criteria: tuple[tuple[str, str], ...] = field(default=())

    def criteria_hash(self) -> str:
        """SHA-256 of the normalised criteria (sorted, URL-encoded), result parameters left out."""
        normalised = urlencode(sorted(self.criteria))
        return hashlib.sha256(f"{self.resource_type}?{normalised}".encode()).hexdigest()


def split_unescaped(text: str, separator: str) -> list[str]:
    """Split on *separator* except where escaped with a backslash (R4 search.html §3.1.1.4.9)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char if char in ",|$\\" else "\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _token_term(text: str) -> TokenTerm:
    if "|" not in text.replace("\\|", ""):
        return TokenTerm(None, text.replace("\\|", "|"))
    system, _, code = text.replace("\\|", "\0").partition("|")
    return TokenTerm(system.replace("\0", "|"), code.replace("\0", "|") or None)


_PREFIXES = frozenset(p.value for p in DatePrefix)


def _date_term(text: str, name: str) -> DateTerm:
    prefix = DatePrefix.EQ
    if text[:2] in _PREFIXES:
        prefix, text = DatePrefix(text[:2]), text[2:]
    parsed = date_range(text)
    if parsed is None:
        raise bad_request(f"'{name}': not a FHIR date/dateTime: use YYYY[-MM[-DD[Thh:mm[:ss][Z]]]]", name)
    return DateTerm(prefix, *parsed)


def _reference_term(text: str, param: SearchParam, type_modifier: str | None) -> TokenTerm:
    target_type, target_id = reference_target(text)
    if not target_type:
        target_type, target_id = "", text
    wanted = type_modifier or param.target
    if target_type and wanted and target_type != wanted:
        raise bad_request(f"'{param.name}' refers to {wanted}, not {target_type}", param.name)
    return TokenTerm(target_type or wanted, target_id)


_MODIFIERS = {
    ParamKind.TOKEN: {"not", "missing"},
    ParamKind.REFERENCE: {"missing"},
    ParamKind.STRING: {"contains", "missing"},
    ParamKind.DATE: {"missing"},
    ParamKind.URI: {"missing"},
}


def _clause(param: SearchParam, modifier: str | None, raw: str) -> Clause:
    name = param.name
    type_modifier = None
    if modifier and param.kind is ParamKind.REFERENCE and modifier[:1].isupper():
        type_modifier, modifier = modifier, None
    if modifier and modifier not in _MODIFIERS[param.kind]:
        raise bad_request(
            f"modifier ':{modifier}' is not supported on '{name}'", name, code=IssueType.NOT_SUPPORTED
        )
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise bad_request(f"'{name}:missing' takes true or false", name)
        return Clause(param.index_name, param.kind, missing=raw == "true")
    terms: list[Term] = []
    for part in split_unescaped(raw, ","):
        if not part:
            raise bad_request(f"'{name}' has an empty value", name)
        if param.kind in (ParamKind.TOKEN, ParamKind.URI):
            terms.append(_token_term(part) if param.kind is ParamKind.TOKEN else TokenTerm(None, part))
        elif param.kind is ParamKind.REFERENCE:
            terms.append(_reference_term(part, param, type_modifier))
        elif param.kind is ParamKind.STRING:
            terms.append(StringTerm(normalise(part), contains=modifier == "contains"))
        else:
            terms.append(_date_term(part, name))
    return Clause(param.index_name, param.kind, tuple(terms), negate=modifier == "not")


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"'{name}' must be an integer", name) from None
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}", name)
    return value


def _sort_keys(resource_type: str, raw: str) -> tuple[SortKey, ...]:
    known = params_of(resource_type)
    keys = []
    for item in raw.split(","):
        descending = item.startswith("-")
        param = known.get(item.lstrip("-"))
        if param is None or param.kind is ParamKind.REFERENCE:
            raise bad_request(
                f"cannot sort {resource_type} by '{item}'", "_sort", code=IssueType.NOT_SUPPORTED
            )
        keys.append(SortKey(param.index_name, param.kind, descending))
    return tuple(keys)


def _include(resource_type: str, raw: str) -> Include:
    source, _, rest = raw.partition(":")
    name, _, target = rest.partition(":")
    param = params_of(resource_type).get(name)
    if source != resource_type or param is None or param.kind is not ParamKind.REFERENCE:
        raise bad_request(
            f"_include '{raw}': use {resource_type}:<reference parameter>[:<type>]",
            "_include",
            code=IssueType.NOT_SUPPORTED,
        )
    return Include(param, target or param.target)


def parse_search(
    resource_type: str, pairs: Iterable[tuple[str, str]], *, lenient: bool = False
) -> SearchRequest:
    """A :class:`SearchRequest` from URL parameters. Unknown parameters are refused (400) unless
    *lenient* (``Prefer: handling=lenient``), when they are left out."""
    known = params_of(resource_type)
    clauses: list[Clause] = []
    criteria: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    includes: list[Include] = []
    for key, raw in pairs:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            if name == "_count":
                options["count"] = _int("_count", raw, 0, MAX_COUNT)
            elif name == "_offset":
                options["offset"] = _int("_offset", raw, 0, 10**9)
            elif name == "_sort":
                options["sort"] = _sort_keys(resource_type, raw)
            elif name == "_include":
                includes.append(_include(resource_type, raw))
            elif name == "_total":
                options["total"] = raw == "accurate"
            elif name == "_summary":
                if raw != "count":
                    raise bad_request(
                        "only _summary=count is supported", "_summary", code=IssueType.NOT_SUPPORTED
                    )
                options["count"], options["total"] = 0, True
            continue
        param = known.get(name)
        if param is None:
            if lenient:
                continue
            raise bad_request(
                f"unknown search parameter '{name}' for {resource_type}", name, code=IssueType.NOT_SUPPORTED
            )
        clauses.append(_clause(param, modifier or None, raw))
        criteria.append((key, raw))
    if options.get("count") == 0:
        options["total"] = True
    return SearchRequest(
        resource_type, tuple(clauses), includes=tuple(includes), criteria=tuple(criteria), **options
    )
