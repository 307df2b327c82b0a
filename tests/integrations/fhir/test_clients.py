"""Clients we did not write talk to the server: SMART on FHIR's ``fhirclient`` and ``fhirpy``
read, search, create and update, and both parse our CapabilityStatement."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhirclient import server as fhirclient_server
from fhirclient.models.observation import Observation as FCObservation
from fhirclient.models.patient import Patient as FCPatient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError, OperationOutcome

from clinic.auth.models import Role
from tests.integrations.fhir.conftest import MRN, FhirServer, patient, unique, vital


def _fhirclient(server: FhirServer, role: Role = Role.ADMIN) -> fhirclient_server.FHIRServer:
    fc = fhirclient_server.FHIRServer(None, base_uri=server.base)
    fc.session.headers["Authorization"] = f"Bearer {server.tokens[role]}"
    return fc


def _fhirpy(server: FhirServer, role: Role = Role.ADMIN) -> SyncFHIRClient:
    return SyncFHIRClient(server.base, authorization=f"Bearer {server.tokens[role]}")


def test_capability_statement_parses_in_both_clients_and_in_fhir_resources(sqlite_server: FhirServer) -> None:
    statement = _fhirclient(sqlite_server).capabilityStatement  # fhirclient's own R4 models
    assert statement.fhirVersion == "4.0.1"
    rest = statement.rest[0]
    served = {r.type for r in rest.resource}
    assert served == {
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
    }
    assert {i.code for i in rest.interaction} == {"transaction", "batch"}
    assert "user/Observation.read" in rest.security.description
    raw = _fhirpy(sqlite_server).execute("metadata", method="get")
    parsed = CapabilityStatement.model_validate(raw)
    observation = next(r for r in parsed.rest[0].resource if r.type == "Observation")
    assert {p.name for p in observation.searchParam} >= {"patient", "code", "date", "status", "identifier"}
    assert "R4B" in (parsed.implementation.description or "")
    update_create = {r.type: r.updateCreate for r in parsed.rest[0].resource}
    # a Patient is the platform's patient: PUT never creates one under a client's id (405)
    assert update_create["Patient"] is False and update_create["Questionnaire"] is True


def test_fhirclient_creates_reads_updates_and_searches(sqlite_server: FhirServer) -> None:
    fc = _fhirclient(sqlite_server)
    mrn = unique("mrn")
    created = FCPatient(patient(mrn)).create(fc)
    pid = created["id"]
    read = FCPatient.read(pid, fc)
    assert read.identifier[0].value == mrn and read.meta.versionId == "1"
    read.gender = "other"
    updated = read.update(fc)
    assert updated["meta"]["versionId"] == "2"
    for when in ("2024-04-01T08:00:00Z", "2024-04-01T09:00:00Z", "2024-04-01T10:00:00Z"):
        FCObservation(vital(pid, when=when)).create(fc)
    # _count=2 makes two pages: fhirclient follows the next link.
    search = FCObservation.where(struct={"patient": pid, "code": "http://loinc.org|8867-4", "_count": "2"})
    found = list(search.perform_resources_iter(fc))
    assert len(found) == 3 and all(o.subject.reference == f"Patient/{pid}" for o in found)


def test_fhirpy_creates_reads_updates_and_searches(sqlite_server: FhirServer) -> None:
    client = _fhirpy(sqlite_server)
    mrn = unique("mrn")
    resource = client.resource("Patient", **{k: v for k, v in patient(mrn).items() if k != "resourceType"})
    resource.save()
    assert resource.id and resource.meta.versionId == "1"
    resource["gender"] = "male"
    resource.save()
    fetched = client.reference("Patient", resource.id).to_resource()
    assert fetched["gender"] == "male" and fetched.meta.versionId == "2"
    for when in ("2024-05-01T08:00:00Z", "2024-05-02T08:00:00Z"):
        client.resource(
            "Observation", **{k: v for k, v in vital(resource.id, when=when).items() if k != "resourceType"}
        ).save()
    observations = (
        client.resources("Observation").search(patient=resource.id, date__ge="2024-05-02").fetch_all()
    )
    assert [o["effectiveDateTime"] for o in observations] == ["2024-05-02T08:00:00Z"]
    paged = client.resources("Observation").search(patient=resource.id).limit(1).fetch_all()
    assert len(paged) == 2
    assert client.resources("Patient").search(identifier=f"{MRN}|{mrn}").count() == 1
    # A conditional update through fhirpy's searchset: the match is updated, not duplicated.
    body = client.resource("Patient", **{**patient(mrn), "gender": "female"})
    _, created = client.resources("Patient").search(identifier=f"{MRN}|{mrn}").update(body)
    assert created is False
    assert client.reference("Patient", resource.id).to_resource().meta.versionId == "3"


def test_clients_see_our_errors(sqlite_server: FhirServer) -> None:
    nurse = _fhirpy(sqlite_server, Role.ICU_NURSE)
    report = nurse.resource("DiagnosticReport", status="final", code={"text": "CXR"})
    with pytest.raises(ForbiddenError):
        report.save()
    admin = _fhirpy(sqlite_server)
    with pytest.raises(OperationOutcome) as refused:
        admin.resource("Observation", status="this_is_invalid", code={"text": "x"}).save()
    assert "Observation.status" in str(refused.value)
