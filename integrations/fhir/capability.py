"""The CapabilityStatement (``GET [base]/metadata``, FHIR R4 capabilitystatement.html): exactly
what this server does, built from the provider registry and the search-parameter table."""

from __future__ import annotations

from typing import Any

import clinic
from clinic.db import utcnow
from integrations.fhir.providers import ProviderRegistry, ResourceProvider
from integrations.fhir.resources import FHIR_VERSION, MODEL_PACKAGE
from integrations.fhir.scopes import security_description
from integrations.fhir.search import SEARCH_PARAMS, ParamKind, params_of

SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
INTERACTIONS = ("read", "vread", "update", "create", "search-type", "history-instance", "history-type")

_PARAM_DOCS = {
    ParamKind.TOKEN: "token: [system]|[code], comma for OR; modifiers :not, :missing",
    ParamKind.REFERENCE: "reference: [type]/[id] or [id]; modifiers :[type], :missing",
    ParamKind.STRING: "string: starts with, case and accents ignored; modifiers :contains, :missing",
    ParamKind.DATE: "date: prefixes eq ne lt gt le ge sa eb; modifier :missing",
    ParamKind.URI: "uri: exact match; modifier :missing",
}


def _resource(resource_type: str, provider: ResourceProvider | None) -> dict[str, Any]:
    params = params_of(resource_type)
    includes = [
        f"{resource_type}:{p.name}"
        for p in SEARCH_PARAMS.get(resource_type, ())
        if p.kind is ParamKind.REFERENCE
    ]
    entry: dict[str, Any] = {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": provider.update_create if provider is not None else True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "not-supported",
        "referencePolicy": ["literal", "enforced", "local"],
        "searchInclude": includes,
        "searchParam": [
            {"name": p.name, "type": str(p.kind), "documentation": _PARAM_DOCS[p.kind]}
            for p in params.values()
        ],
    }
    notes = [provider.capability_note] if provider is not None and provider.capability_note else []
    if resource_type == "Observation":
        entry["supportedProfile"] = ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]
        notes.append(
            "Observations in the vital-signs category must carry a vital-sign LOINC code with its UCUM unit, "
            "a subject and an effective time (422 otherwise)."
        )
    if notes:
        entry["documentation"] = " ".join(notes)
    return entry


REST_DOCUMENTATION = (
    "JSON only (application/fhir+json). Paging: _count (max 1000) with self/next/previous links "
    "(_offset); _sort on date, token and string parameters, _id and _lastUpdated (prefix - for "
    "descending); _include on the listed reference parameters; _total=accurate or _summary=count "
    "for totals. Unknown search parameters are refused with 400 unless Prefer: handling=lenient. "
    'Prefer: return=representation (default) | minimal | OperationOutcome. ETag W/"<versionId>" and '
    "If-Match (412 on mismatch); If-None-Exist (conditional create) and PUT [type]?[criteria] "
    "(conditional update) are settled by a unique claim in the database when identical requests race. "
    "Errors: 400 unparsable input, unknown elements, wrong JSON types, codes outside required "
    "bindings; 404 unknown type or id; 412 version or multiple-match conflicts; 422 references to "
    "resources that do not exist on this server and vital-signs profile violations. Every relative "
    "reference must resolve here; other servers' absolute URLs are kept unchecked. Not supported: "
    "delete, patch, conditional read/delete, system-level search and history, chained parameters, "
    "_revinclude, XML."
)


def capability_statement(registry: ProviderRegistry, base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "id": "smart-clinic",
        "url": f"{base}/metadata",
        "name": "SmartClinicFHIR",
        "title": "Smart Clinic FHIR API",
        "status": "active",
        "experimental": False,
        "date": utcnow().date().isoformat(),
        "publisher": "Smart Clinic platform",
        "kind": "instance",
        "software": {
            "name": f"Smart Clinic FHIR API (validated with {MODEL_PACKAGE})",
            "version": clinic.__version__,
        },
        "implementation": {
            "description": (
                f"FHIR R4 ({FHIR_VERSION}) REST API. fhir.resources has no R4 package: resources are parsed "
                f"and validated with its R4B (4.3.0) models ({MODEL_PACKAGE}), which read these R4 resource "
                "types unchanged, plus this server's checks of required bindings and the vital-signs profile."
            ),
            "url": base,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": REST_DOCUMENTATION,
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": security_description(),
                    "extension": [
                        {
                            "url": SMART_OAUTH_URIS,
                            "extension": [
                                {"url": "token", "valueUri": base.rsplit("/fhir", 1)[0] + "/api/auth/token"}
                            ],
                        }
                    ],
                },
                "resource": [_resource(t, registry.get(t)) for t in registry.types],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
