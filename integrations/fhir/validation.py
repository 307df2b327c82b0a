"""Validation of incoming resources: JSON, structure and types, required bindings, vital signs.

Layers, each naming the element it refuses (OperationOutcome.issue.expression):

1. JSON that does not parse → 400 ``structure``.
2. fhir.resources (pydantic) validation of the R4B model: unknown elements, missing required
   elements, malformed primitives → 400.
3. JSON primitive types as FHIR's JSON format requires them (R4 json.html §1.6.2): fhir.resources
   turns ``"true"`` into a boolean, ``"80"`` into a decimal and ``1700000000`` into a dateTime;
   the stored JSON must be what the spec says, so those are refused here → 400. The same walk
   collects every ``Reference.reference`` with the target types its element allows.
4. Required bindings (:mod:`integrations.fhir.resources`) → 400 ``code-invalid``.
5. The vital-signs profile for Observations in the vital-signs category → 422 (profile rule).
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import json
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import pydantic

from integrations.fhir.outcome import FhirError, Issue, IssueType, bad_request, not_found
from integrations.fhir.resources import (
    COMMON_BINDINGS,
    LOINC,
    OBSERVATION_CATEGORY,
    QUESTIONNAIRE_ITEM_BINDINGS,
    REQUIRED_BINDINGS,
    SERVED_TYPES,
    UCUM,
    VITAL_SIGNS,
    VITAL_SIGNS_CATEGORY,
    model_class,
)

#: A relative literal reference: ``Type/id`` or ``Type/id/_history/vid`` (R4 references.html).
RELATIVE_REFERENCE = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/(?P<vid>[A-Za-z0-9\-.]{1,64}))?$"
)
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def parse_json(raw: bytes) -> Any:
    """The request body as JSON; 400 when it is not JSON at all."""
    if not raw.strip():
        raise bad_request("the request has no body", code=IssueType.REQUIRED)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise bad_request(f"the body is not valid JSON{where}", code=IssueType.STRUCTURE) from exc


# --- JSON types of FHIR primitives --------------------------------------------------------------


class _Kind(IntEnum):
    ANY = 0
    BOOLEAN = 1
    INTEGER = 2
    DECIMAL = 3
    STRING = 4
    OBJECT = 5
    RESOURCE = 6


#: The JSON types each primitive kind accepts (``type(value) in ...``: bool is not an integer here).
_ACCEPTS: dict[_Kind, tuple[type, ...]] = {
    _Kind.BOOLEAN: (bool,),
    _Kind.INTEGER: (int,),
    _Kind.DECIMAL: (int, float),
    _Kind.STRING: (str,),
}

_JSON_NAMES = {
    _Kind.BOOLEAN: "a JSON boolean",
    _Kind.INTEGER: "a JSON integer",
    _Kind.DECIMAL: "a JSON number",
    _Kind.STRING: "a JSON string",
}


@dataclass(frozen=True)
class _Field:
    kind: _Kind
    many: bool
    model: str = ""  # dotted path of the element's model class (OBJECT)
    targets: tuple[str, ...] = ()  # Reference target types allowed by the element


@dataclass
class ReferenceSite:
    """One ``Reference`` element met in a resource: where, the JSON object (so that a transaction
    can rewrite ``urn:uuid`` references in place) and the target types it may point to."""

    expression: str
    element: dict[str, Any]
    targets: tuple[str, ...]

    @property
    def reference(self) -> str:
        return str(self.element.get("reference", ""))


#: Python types of fhir.resources' primitives → the JSON type FHIR requires for them.
_PRIMITIVES: dict[Any, _Kind] = {
    bool: _Kind.BOOLEAN,
    int: _Kind.INTEGER,
    float: _Kind.DECIMAL,
    decimal.Decimal: _Kind.DECIMAL,
    str: _Kind.STRING,
    bytes: _Kind.STRING,
    dt.datetime: _Kind.STRING,
    dt.date: _Kind.STRING,
    dt.time: _Kind.STRING,
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The element's base type and whether it repeats, through Optional/List/Annotated."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None, many
            annotation = args[0]
        elif origin is list:
            many = True
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, many


def _describe(info: pydantic.fields.FieldInfo) -> _Field:
    base, many = _unwrap(info.annotation)
    kind = _PRIMITIVES.get(base)
    if kind is not None:
        return _Field(kind, many)
    model = getattr(base, "_model_klass", None)
    if not isinstance(model, str):
        return _Field(_Kind.ANY, many)
    if model.endswith(".Resource"):
        return _Field(_Kind.RESOURCE, many)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    targets = tuple(str(t) for t in extra.get("enum_reference_types", ()) or ())  # type: ignore[union-attr]
    return _Field(_Kind.OBJECT, many, model, targets)


_FIELDS: dict[Any, dict[str, _Field]] = {}
_MODELS: dict[str, Any] = {}


def _fields_of(cls: Any) -> dict[str, _Field]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = {(f.alias or name): _describe(f) for name, f in cls.model_fields.items()}
        _FIELDS[cls] = fields
    return fields


def _model(path: str) -> Any:
    cls = _MODELS.get(path)
    if cls is None:
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        _MODELS[path] = cls
    return cls


_REFERENCE_MODEL = "fhir.resources.R4B.reference.Reference"


@dataclass
class _Walk:
    issues: list[Issue] = field(default_factory=list)
    references: list[ReferenceSite] = field(default_factory=list)
    #: Report unknown elements here (the Bundle envelope, which pydantic does not see).
    strict: bool = False
    #: Walk into contained/entry resources (False for the envelope: entries are checked alone).
    into_resources: bool = True

    def resource(self, obj: dict[str, Any], cls: Any, where: str) -> None:
        fields = _fields_of(cls)
        for key, value in obj.items():
            spec = fields.get(key)
            if spec is None:
                if self.strict and key != "resourceType":
                    self.issues.append(Issue(IssueType.STRUCTURE, "unknown element", (f"{where}.{key}",)))
                continue  # unknown elements of resources are pydantic's to report
            if value is None:
                continue
            accepts = _ACCEPTS.get(spec.kind)
            # Paths are formatted only for objects and failures: most elements are primitives.
            if spec.many:
                if isinstance(value, list):
                    for i, item in enumerate(value):
                        if accepts is None:
                            self.nested(item, spec, f"{where}.{key}[{i}]")
                        elif type(item) not in accepts:
                            self.wrong(spec, f"{where}.{key}[{i}]")
            elif accepts is None:
                self.nested(value, spec, f"{where}.{key}")
            elif type(value) not in accepts:
                self.wrong(spec, f"{where}.{key}")

    def wrong(self, spec: _Field, where: str) -> None:
        self.issues.append(
            Issue(IssueType.STRUCTURE, f"wrong JSON type: must be {_JSON_NAMES[spec.kind]}", (where,))
        )

    def nested(self, value: Any, spec: _Field, where: str) -> None:
        if spec.kind is _Kind.OBJECT:
            if not isinstance(value, dict):
                if self.strict:
                    self.issues.append(Issue(IssueType.STRUCTURE, "must be a JSON object", (where,)))
                return
            if spec.model == _REFERENCE_MODEL and isinstance(value.get("reference"), str):
                self.references.append(ReferenceSite(where, value, spec.targets))
            self.resource(value, _model(spec.model), where)
        elif spec.kind is _Kind.RESOURCE and self.into_resources and isinstance(value, dict):
            cls = model_class(str(value.get("resourceType", "")))
            if cls is not None:
                self.resource(value, cls, where)


def check_envelope(bundle: dict[str, Any]) -> None:
    """A Bundle's own elements, its entries' resources left out (they are checked one by one):
    unknown elements and JSON types (400). Cheaper than validating the Bundle model, which would
    validate every resource a second time."""
    walk = _Walk(strict=True, into_resources=False)
    walk.resource(bundle, model_class("Bundle"), "Bundle")
    if walk.issues:
        raise FhirError(400, walk.issues)


# --- bindings and profiles ----------------------------------------------------------------------


def _at(obj: Any, parts: list[str], where: str) -> Iterator[tuple[str, Any]]:
    """(expression, value) of every value at the dotted path *parts* under *obj*, through lists."""
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _at(item, parts, f"{where}[{i}]")
        return
    if not parts:
        yield where, obj
        return
    if isinstance(obj, dict) and parts[0] in obj:
        yield from _at(obj[parts[0]], parts[1:], f"{where}.{parts[0]}")


def _binding_issues(body: dict[str, Any], resource_type: str, root: str) -> list[Issue]:
    issues: list[Issue] = []
    rules = (*COMMON_BINDINGS, *REQUIRED_BINDINGS.get(resource_type, ()))
    targets: list[tuple[Any, str, tuple[tuple[str, frozenset[str]], ...]]] = [(body, root, rules)]
    if resource_type == "Questionnaire":
        targets += [(item, where, QUESTIONNAIRE_ITEM_BINDINGS) for where, item in _items(body, root)]
    for obj, where, table in targets:
        for path, allowed in table:
            for expression, value in _at(obj, path.split("."), where):
                if isinstance(value, str) and value not in allowed:
                    issues.append(
                        Issue(
                            IssueType.CODE_INVALID,
                            f"'{value}' is not in the required value set ({', '.join(sorted(allowed))})",
                            (expression,),
                        )
                    )
    return issues


def _items(obj: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Questionnaire.item, at any depth."""
    for i, item in enumerate(obj.get("item") or ()):
        if isinstance(item, dict):
            here = f"{where}.item[{i}]"
            yield here, item
            yield from _items(item, here)


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or () if isinstance(c, dict)]


def is_vital_sign(body: dict[str, Any]) -> bool:
    return any(
        c.get("system") == OBSERVATION_CATEGORY and c.get("code") == VITAL_SIGNS_CATEGORY
        for category in body.get("category") or ()
        for c in _codings(category)
    )


def _vital_code(concept: Any) -> str | None:
    for coding in _codings(concept):
        if coding.get("system") == LOINC and coding.get("code") in VITAL_SIGNS:
            return str(coding["code"])
    return None


def _unit_issues(holder: dict[str, Any], code: str, where: str) -> list[Issue]:
    units = VITAL_SIGNS[code]
    if units is None:
        return []
    quantity = holder.get("valueQuantity")
    other_values = [k for k in holder if k.startswith("value") and k != "valueQuantity"]
    if quantity is None:
        if other_values:
            return [
                Issue(
                    IssueType.VALUE, f"LOINC {code} takes a Quantity value", (f"{where}.{other_values[0]}",)
                )
            ]
        return []
    if quantity.get("system") != UCUM or quantity.get("code") not in units:
        return [
            Issue(
                IssueType.CODE_INVALID,
                f"LOINC {code} needs a UCUM unit ({', '.join(sorted(units))}) with system {UCUM}",
                (f"{where}.valueQuantity.code",),
            )
        ]
    return []


def vital_signs_issues(body: dict[str, Any], root: str) -> list[Issue]:
    """The R4 vital-signs profile's rules the platform relies on (observation-vitalsigns.html):
    a vital-sign LOINC code, UCUM units, a subject, an effective time, and vs-2 (a value, a
    data-absent reason, members or components)."""
    code = _vital_code(body.get("code"))
    if code is None:
        return [
            Issue(
                IssueType.CODE_INVALID,
                "an Observation in the vital-signs category needs a vital-sign LOINC code "
                f"({', '.join(VITAL_SIGNS)})",
                (f"{root}.code",),
            )
        ]
    issues = _unit_issues(body, code, root)
    if not body.get("subject"):
        issues.append(Issue(IssueType.REQUIRED, "vital signs need a subject", (f"{root}.subject",)))
    if not any(k.startswith("effective") for k in body):
        issues.append(
            Issue(IssueType.REQUIRED, "vital signs need an effective time", (f"{root}.effective[x]",))
        )
    has_value = any(k.startswith("value") for k in body) or "dataAbsentReason" in body
    if not (has_value or body.get("hasMember") or body.get("component")):
        issues.append(
            Issue(IssueType.INVARIANT, "vs-2: a value, a dataAbsentReason, members or components", (root,))
        )
    for i, component in enumerate(body.get("component") or ()):
        if isinstance(component, dict):
            component_code = _vital_code(component.get("code"))
            if component_code is not None:
                issues += _unit_issues(component, component_code, f"{root}.component[{i}]")
    return issues


# --- the whole check ----------------------------------------------------------------------------


@dataclass
class CheckedResource:
    resource_type: str
    body: dict[str, Any]
    references: list[ReferenceSite]


def pydantic_issues(exc: pydantic.ValidationError, root: str) -> list[Issue]:
    issues = []
    for err in exc.errors(include_input=False, include_url=False):
        where = root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            issues.append(Issue(IssueType.STRUCTURE, "unknown element", (where,)))
        elif kind == "missing":
            issues.append(Issue(IssueType.REQUIRED, "required element is missing", (where,)))
        else:
            issues.append(Issue(IssueType.VALUE, str(err["msg"]).splitlines()[0][:200], (where,)))
    return issues


def check_resource(body: Any, expected_type: str | None, root: str | None = None) -> CheckedResource:
    """Validate *body* as a resource of *expected_type* (None: any served type).

    Raises :class:`FhirError`: 400 for what the base specification refuses, 422 for the
    vital-signs profile. Expressions start at *root* (default: the resource type)."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object (a FHIR resource)", code=IssueType.STRUCTURE)
    resource_type = body.get("resourceType")
    root = root or str(expected_type or resource_type)
    if not isinstance(resource_type, str) or not resource_type:
        raise bad_request("resourceType is missing", f"{root}.resourceType", code=IssueType.REQUIRED)
    if expected_type is not None and resource_type != expected_type:
        raise bad_request(
            f"resourceType '{resource_type}' does not match the URL's type '{expected_type}'",
            f"{root}.resourceType",
        )
    cls = model_class(resource_type)
    if cls is None:
        raise bad_request(f"unknown resourceType '{resource_type}'", f"{root}.resourceType")
    if resource_type not in SERVED_TYPES:
        raise not_found(f"resource type '{resource_type}' is not served here", f"{root}.resourceType")
    issues: list[Issue] = []
    try:
        cls.model_validate(body)
    except pydantic.ValidationError as exc:
        issues += pydantic_issues(exc, root)
    walk = _Walk()
    walk.resource(body, cls, root)
    issues += walk.issues
    issues += _binding_issues(body, resource_type, root)
    if issues:
        raise FhirError(400, issues)
    if resource_type == "Observation" and is_vital_sign(body):
        profile_issues = vital_signs_issues(body, root)
        if profile_issues:
            raise FhirError(422, profile_issues)
    return CheckedResource(resource_type, body, walk.references)
