"""The resource types we serve, their fhir.resources models, and the required bindings we check.

fhir.resources has no R4 (4.0.1) package; its R4B (4.3.0) models are used to parse and validate
R4 JSON, which they read unchanged for these resource types. They do not enforce required
bindings (``Observation.status = "this_is_invalid"`` passes), so the codes the platform relies on
are checked here against the R4 value sets (http://hl7.org/fhir/R4/terminologies.html#required).
"""

from __future__ import annotations

import functools
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

#: FHIR version served (CapabilityStatement.fhirVersion).
FHIR_VERSION = "4.0.1"
#: The model package used to validate it.
MODEL_PACKAGE = "fhir.resources.R4B"

SERVED_TYPES: tuple[str, ...] = (
    "Patient",
    "Encounter",
    "Observation",
    "ServiceRequest",
    "ImagingStudy",
    "DiagnosticReport",
    "Questionnaire",
    "QuestionnaireResponse",
    "Schedule",
    "Slot",
    "Appointment",
)


@functools.cache
def model_class(resource_type: str) -> Any | None:
    """The fhir.resources R4B model of *resource_type*, or None for an unknown name."""
    if not resource_type.isalpha() or not resource_type[:1].isupper():
        return None
    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError, ImportError):
        return None


def load_models() -> None:
    """Import the models of the served types (and Bundle, OperationOutcome) now, at start-up,
    rather than on the first request that names each type."""
    for resource_type in (*SERVED_TYPES, "Bundle", "OperationOutcome"):
        model_class(resource_type)


def _codes(*values: str) -> frozenset[str]:
    return frozenset(values)


# R4 value sets with required bindings (names as in http://hl7.org/fhir/R4/valueset-<name>.html).
OBSERVATION_STATUS = _codes(
    "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"
)
ENCOUNTER_STATUS = _codes(
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
)
ENCOUNTER_LOCATION_STATUS = _codes("planned", "active", "reserved", "completed")
REQUEST_STATUS = _codes("draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown")
REQUEST_INTENT = _codes(
    "proposal",
    "plan",
    "directive",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
)
REQUEST_PRIORITY = _codes("routine", "urgent", "asap", "stat")
IMAGINGSTUDY_STATUS = _codes("registered", "available", "cancelled", "entered-in-error", "unknown")
DIAGNOSTIC_REPORT_STATUS = _codes(
    "registered",
    "partial",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "appended",
    "cancelled",
    "entered-in-error",
    "unknown",
)
PUBLICATION_STATUS = _codes("draft", "active", "retired", "unknown")
QUESTIONNAIRE_ITEM_TYPE = _codes(
    "group",
    "display",
    "boolean",
    "decimal",
    "integer",
    "date",
    "dateTime",
    "time",
    "string",
    "text",
    "url",
    "choice",
    "open-choice",
    "attachment",
    "reference",
    "quantity",
)
QUESTIONNAIRE_ENABLE_OPERATOR = _codes("exists", "=", "!=", ">", "<", ">=", "<=")
QUESTIONNAIRE_ENABLE_BEHAVIOR = _codes("all", "any")
QUESTIONNAIRE_RESPONSE_STATUS = _codes("in-progress", "completed", "amended", "entered-in-error", "stopped")
SLOT_STATUS = _codes("busy", "free", "busy-unavailable", "busy-tentative", "entered-in-error")
APPOINTMENT_STATUS = _codes(
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
)
PARTICIPANT_REQUIRED = _codes("required", "optional", "information-only")
PARTICIPATION_STATUS = _codes("accepted", "declined", "tentative", "needs-action")
ADMINISTRATIVE_GENDER = _codes("male", "female", "other", "unknown")
LINK_TYPE = _codes("replaced-by", "replaces", "refer", "seealso")
IDENTIFIER_USE = _codes("usual", "official", "temp", "secondary", "old")
NAME_USE = _codes("usual", "official", "temp", "nickname", "anonymous", "old", "maiden")
CONTACT_POINT_SYSTEM = _codes("phone", "fax", "email", "pager", "url", "sms", "other")
CONTACT_POINT_USE = _codes("home", "work", "temp", "old", "mobile")
ADDRESS_USE = _codes("home", "work", "temp", "old", "billing")
ADDRESS_TYPE = _codes("postal", "physical", "both")
NARRATIVE_STATUS = _codes("generated", "extensions", "additional", "empty")
QUANTITY_COMPARATOR = _codes("<", "<=", ">=", ">")

#: Elements of every served type (``identifier`` and ``text`` exist on all of them).
COMMON_BINDINGS: tuple[tuple[str, frozenset[str]], ...] = (
    ("identifier.use", IDENTIFIER_USE),
    ("text.status", NARRATIVE_STATUS),
)

#: Required bindings per type: (dotted element path, allowed codes). Lists are walked.
REQUIRED_BINDINGS: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {
    "Patient": (
        ("gender", ADMINISTRATIVE_GENDER),
        ("link.type", LINK_TYPE),
        ("name.use", NAME_USE),
        ("telecom.system", CONTACT_POINT_SYSTEM),
        ("telecom.use", CONTACT_POINT_USE),
        ("address.use", ADDRESS_USE),
        ("address.type", ADDRESS_TYPE),
        ("contact.gender", ADMINISTRATIVE_GENDER),
    ),
    "Encounter": (
        ("status", ENCOUNTER_STATUS),
        ("statusHistory.status", ENCOUNTER_STATUS),
        ("location.status", ENCOUNTER_LOCATION_STATUS),
    ),
    "Observation": (
        ("status", OBSERVATION_STATUS),
        ("valueQuantity.comparator", QUANTITY_COMPARATOR),
        ("component.valueQuantity.comparator", QUANTITY_COMPARATOR),
    ),
    "ServiceRequest": (
        ("status", REQUEST_STATUS),
        ("intent", REQUEST_INTENT),
        ("priority", REQUEST_PRIORITY),
    ),
    "ImagingStudy": (("status", IMAGINGSTUDY_STATUS),),
    "DiagnosticReport": (("status", DIAGNOSTIC_REPORT_STATUS),),
    "Questionnaire": (("status", PUBLICATION_STATUS),),
    "QuestionnaireResponse": (("status", QUESTIONNAIRE_RESPONSE_STATUS),),
    "Schedule": (),
    "Slot": (("status", SLOT_STATUS),),
    "Appointment": (
        ("status", APPOINTMENT_STATUS),
        ("participant.required", PARTICIPANT_REQUIRED),
        ("participant.status", PARTICIPATION_STATUS),
    ),
}

#: Questionnaire.item nests: these bindings apply at every level of items.
QUESTIONNAIRE_ITEM_BINDINGS: tuple[tuple[str, frozenset[str]], ...] = (
    ("type", QUESTIONNAIRE_ITEM_TYPE),
    ("enableBehavior", QUESTIONNAIRE_ENABLE_BEHAVIOR),
    ("enableWhen.operator", QUESTIONNAIRE_ENABLE_OPERATOR),
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_CATEGORY = "vital-signs"

#: The vital-signs profile's LOINC codes with their UCUM units (R4 observation-vitalsigns.html
#: §"Vital Signs Profiles"); None: a panel that carries no value of its own.
VITAL_SIGNS: dict[str, frozenset[str] | None] = {
    "85353-1": None,  # vital signs panel
    "9279-1": _codes("/min"),  # respiratory rate
    "8867-4": _codes("/min"),  # heart rate
    "2708-6": _codes("%"),  # oxygen saturation in arterial blood
    "59408-5": _codes("%"),  # oxygen saturation by pulse oximetry
    "8310-5": _codes("Cel", "[degF]"),  # body temperature
    "8302-2": _codes("cm", "[in_i]"),  # body height
    "9843-4": _codes("cm", "[in_i]"),  # head circumference
    "29463-7": _codes("kg", "g", "[lb_av]"),  # body weight
    "39156-5": _codes("kg/m2"),  # body mass index
    "85354-9": None,  # blood pressure panel (components below)
    "8480-6": _codes("mm[Hg]"),  # systolic blood pressure
    "8462-4": _codes("mm[Hg]"),  # diastolic blood pressure
}
