"""SMART App Launch scopes (v1 syntax, ``user/<Type>.<read|write>``) granted to each platform role.

The platform's login issues the bearer token (``clinic.auth``); the role it carries maps to the
scopes below. The table is shown in the CapabilityStatement's ``rest.security.description`` so
that a client can see what each role may do (SMART App Launch 1.0 §Scopes and launch context).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from clinic.auth.models import Role


class Access(StrEnum):
    READ = "read"
    WRITE = "write"


#: Clinical resource types: what a radiologist may read.
CLINICAL_TYPES = (
    "Patient",
    "Encounter",
    "Observation",
    "ServiceRequest",
    "ImagingStudy",
    "DiagnosticReport",
    "Questionnaire",
    "QuestionnaireResponse",
)


def _scopes(types: Iterable[str], access: Access) -> tuple[str, ...]:
    return tuple(f"user/{t}.{access}" for t in types)


#: Role → scopes. ``*`` stands for every resource type.
ROLE_SCOPES: dict[Role, tuple[str, ...]] = {
    # Remote-ICU nurses chart vitals and read the rest of the clinical picture.
    Role.ICU_NURSE: (
        *_scopes(("Patient", "Encounter", "Observation", "ServiceRequest", "ImagingStudy"), Access.READ),
        *_scopes(("DiagnosticReport",), Access.READ),
        "user/Observation.write",
    ),
    # Radiologists read everything clinical and sign reports.
    Role.RADIOLOGIST: (*_scopes(CLINICAL_TYPES, Access.READ), "user/DiagnosticReport.write"),
    # Respiratory-clinic staff register patients, pre-screen (Questionnaire/Response), book slots
    # and record vitals; they read orders, studies and reports for the triage queue.
    Role.CLINIC: (
        *_scopes(
            (
                "Patient",
                "Questionnaire",
                "QuestionnaireResponse",
                "Schedule",
                "Slot",
                "Appointment",
                "Observation",
            ),
            Access.READ,
        ),
        *_scopes(
            (
                "Patient",
                "Questionnaire",
                "QuestionnaireResponse",
                "Schedule",
                "Slot",
                "Appointment",
                "Observation",
            ),
            Access.WRITE,
        ),
        *_scopes(("Encounter", "ServiceRequest", "ImagingStudy", "DiagnosticReport"), Access.READ),
    ),
    Role.ADMIN: ("user/*.read", "user/*.write"),
}


def scopes_for(role: Role | str) -> tuple[str, ...]:
    return ROLE_SCOPES.get(Role(role), ())


def scope_name(resource_type: str, access: Access) -> str:
    return f"user/{resource_type}.{access}"


def allows(role: Role | str, resource_type: str, access: Access) -> bool:
    """Whether *role* holds ``user/<resource_type>.<access>`` (or the ``*`` form of it)."""
    granted = scopes_for(role)
    return scope_name(resource_type, access) in granted or f"user/*.{access}" in granted


def security_description() -> str:
    """The role → scope table in Markdown, for the CapabilityStatement."""
    lines = [
        "Bearer tokens from the platform login (`POST /api/auth/token`, OAuth2 password flow); "
        "SMART v1 scopes by role:",
        "",
        "| role | scopes |",
        "|---|---|",
    ]
    lines += [f"| {role} | {' '.join(scopes)} |" for role, scopes in ROLE_SCOPES.items()]
    lines += ["", "401 without a valid token; 403 with an OperationOutcome when a scope is missing."]
    return "\n".join(lines)
