"""FHIR views of the domain: Patient, Encounter (ADT visits), Observation (vital signs),
ServiceRequest (imaging orders), ImagingStudy and DiagnosticReport (AI reads) are the rows ADT,
ORU, ORM, the DICOM SCP and the AI worker wrote, not a second copy kept in step by hand (see
:mod:`.base` for how)."""

from __future__ import annotations

from integrations.fhir.domain.diagnostic_report import DiagnosticReportProvider
from integrations.fhir.domain.encounter import EncounterProvider
from integrations.fhir.domain.imaging_study import ImagingStudyProvider
from integrations.fhir.domain.observation import ObservationProvider
from integrations.fhir.domain.patient import PatientProvider
from integrations.fhir.domain.service_request import ServiceRequestProvider
from integrations.fhir.providers import ProviderRegistry


def domain_registry() -> ProviderRegistry:
    """Every served type, with the domain-backed ones replacing the generic store's."""
    registry = ProviderRegistry()
    for provider in (
        PatientProvider(),
        EncounterProvider(),
        ObservationProvider(),
        ServiceRequestProvider(),
        ImagingStudyProvider(),
        DiagnosticReportProvider(),
    ):
        registry.replace(provider)
    return registry
