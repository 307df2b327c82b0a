"""OperationOutcome: every error of the FHIR API, as a value with its HTTP status.

Statuses follow FHIR R4 http.html §3.1.0.4/§3.1.0.5: 400 for a body that cannot be parsed or fails
the base specification's rules (structure, types, required bindings), 404 for an unknown type or
id, 409/412 for version conflicts, 422 for profile or business-rule violations (the vital-signs
profile, references that resolve to nothing). Issue types are the R4 ``issue-type`` codes.
Messages name elements and codes, never patient data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """R4 ``issue-severity`` (required binding of OperationOutcome.issue.severity)."""

    FATAL = "fatal"
    ERROR = "error"
    WARNING = "warning"
    INFORMATION = "information"


class IssueType(StrEnum):
    """R4 ``issue-type`` codes we use (required binding of OperationOutcome.issue.code)."""

    INVALID = "invalid"
    STRUCTURE = "structure"
    REQUIRED = "required"
    VALUE = "value"
    INVARIANT = "invariant"
    SECURITY = "security"
    LOGIN = "login"
    FORBIDDEN = "forbidden"
    PROCESSING = "processing"
    NOT_SUPPORTED = "not-supported"
    DUPLICATE = "duplicate"
    MULTIPLE_MATCHES = "multiple-matches"
    NOT_FOUND = "not-found"
    CODE_INVALID = "code-invalid"
    BUSINESS_RULE = "business-rule"
    CONFLICT = "conflict"
    EXCEPTION = "exception"
    INFORMATIONAL = "informational"


@dataclass(frozen=True)
class Issue:
    code: IssueType
    diagnostics: str
    expression: tuple[str, ...] = ()
    severity: Severity = Severity.ERROR

    def as_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": str(self.severity), "code": str(self.code)}
        if self.diagnostics:
            issue["diagnostics"] = self.diagnostics
        if self.expression:
            # R4 keeps the deprecated ``location`` (XPath-ish) next to ``expression`` (FHIRPath);
            # clients of both generations find the element.
            issue["expression"] = list(self.expression)
            issue["location"] = list(self.expression)
        return issue

    def rooted(self, old: str, new: str) -> Issue:
        """The same issue with expressions moved from root *old* to *new* (bundle entries)."""
        moved = tuple(new + e[len(old) :] if e.startswith(old) else e for e in self.expression)
        return replace(self, expression=moved or (new,))


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in issues]}


def informational(message: str) -> dict[str, Any]:
    return operation_outcome([Issue(IssueType.INFORMATIONAL, message, severity=Severity.INFORMATION)])


@dataclass
class FhirError(Exception):
    """An error answered with *status* and an OperationOutcome of *issues*."""

    status: int
    issues: Sequence[Issue]
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.status, "; ".join(i.diagnostics for i in self.issues))

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)

    def body(self) -> bytes:
        return json.dumps(self.outcome(), ensure_ascii=False).encode()

    def rooted(self, old: str, new: str) -> FhirError:
        return FhirError(self.status, [i.rooted(old, new) for i in self.issues], self.headers)

    def at(self, expression: str) -> FhirError:
        """The same error, every issue pointing at *expression* (e.g. a bundle entry's request)."""
        return FhirError(
            self.status, [replace(i, expression=(expression,)) for i in self.issues], self.headers
        )


def error(status: int, code: IssueType, diagnostics: str, *expression: str) -> FhirError:
    """A one-issue error."""
    return FhirError(status, [Issue(code, diagnostics, tuple(expression))])


def bad_request(diagnostics: str, *expression: str, code: IssueType = IssueType.INVALID) -> FhirError:
    return error(400, code, diagnostics, *expression)


def not_found(diagnostics: str, *expression: str) -> FhirError:
    return error(404, IssueType.NOT_FOUND, diagnostics, *expression)


def unprocessable(diagnostics: str, *expression: str, code: IssueType = IssueType.BUSINESS_RULE) -> FhirError:
    return error(422, code, diagnostics, *expression)


def precondition_failed(diagnostics: str, code: IssueType = IssueType.CONFLICT) -> FhirError:
    return error(412, code, diagnostics)
