"""Invalid input gets the status FHIR R4 http.html gives it, an OperationOutcome naming the element,
and stores nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integrations.fhir.conftest import STORED_ROWS, FhirServer, create, patient, unique, vital

Body = dict[str, Any]


@pytest.fixture(scope="module")
def patient_id(sqlite_server: FhirServer) -> str:
    return str(create(sqlite_server, patient(unique("mrn")))["id"])


def _stored(server: FhirServer) -> int:
    return server.count(STORED_ROWS)


def _refused(
    server: FhirServer, method: str, path: str, status: int, expression: str | None, **kwargs: Any
) -> Body:
    before = _stored(server)
    with server.client() as client:
        response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome: Body = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] and all(i["severity"] == "error" for i in outcome["issue"])
    if expression is not None:
        expressions = [e for i in outcome["issue"] for e in i.get("expression", [])]
        assert expression in expressions, outcome
    assert _stored(server) == before, "nothing may be stored"
    return outcome


def test_broken_json(sqlite_server: FhirServer) -> None:
    outcome = _refused(sqlite_server, "POST", "/Observation", 400, None, content=b'{"resourceType": "Obs')
    assert outcome["issue"][0]["code"] == "structure"


def test_unknown_resource_type_in_the_url(sqlite_server: FhirServer) -> None:
    _refused(sqlite_server, "POST", "/Foo", 404, None, json={"resourceType": "Foo"})
    _refused(sqlite_server, "GET", "/Practitioner/1", 404, None)


def test_unknown_resource_type_in_the_body(sqlite_server: FhirServer) -> None:
    _refused(
        sqlite_server, "POST", "/Observation", 400, "Observation.resourceType", json={"resourceType": "Foo"}
    )


def test_resource_type_in_the_body_differs_from_the_url(sqlite_server: FhirServer, patient_id: str) -> None:
    _refused(sqlite_server, "POST", "/Observation", 400, "Observation.resourceType", json=patient(unique()))


def test_unknown_element(sqlite_server: FhirServer, patient_id: str) -> None:
    outcome = _refused(
        sqlite_server,
        "POST",
        "/Observation",
        400,
        "Observation.colour",
        json={**vital(patient_id), "colour": "red"},
    )
    assert outcome["issue"][0]["code"] == "structure"


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        (
            {
                "valueQuantity": {
                    "value": "80",
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                }
            },
            "Observation.valueQuantity.value",
        ),
        ({"effectiveDateTime": 1700000000}, "Observation.effectiveDateTime"),
        ({"status": 5}, "Observation.status"),
        ({"category": {"text": "vital-signs"}}, "Observation.category"),
        ({"effectiveDateTime": "2024-03-01T10:00:00"}, "Observation.effectiveDateTime"),
    ],
    ids=[
        "decimal-as-string",
        "datetime-as-number",
        "code-as-number",
        "object-for-list",
        "datetime-without-zone",
    ],
)
def test_wrong_type(sqlite_server: FhirServer, patient_id: str, change: Body, expression: str) -> None:
    _refused(sqlite_server, "POST", "/Observation", 400, expression, json={**vital(patient_id), **change})


def test_boolean_as_string(sqlite_server: FhirServer) -> None:
    _refused(sqlite_server, "POST", "/Patient", 400, "Patient.active", json=patient(unique(), active="true"))


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (
            {"resourceType": "Observation", "status": "this_is_invalid", "code": {"text": "x"}},
            "Observation.status",
        ),
        ({"resourceType": "Encounter", "status": "waiting", "class": {"code": "AMB"}}, "Encounter.status"),
        (
            {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "wish",
                "subject": {"reference": "Patient/p"},
            },
            "ServiceRequest.intent",
        ),
        (
            {
                "resourceType": "ServiceRequest",
                "status": "done",
                "intent": "order",
                "subject": {"reference": "Patient/p"},
            },
            "ServiceRequest.status",
        ),
        (
            {"resourceType": "DiagnosticReport", "status": "signed", "code": {"text": "CXR"}},
            "DiagnosticReport.status",
        ),
        (
            {"resourceType": "ImagingStudy", "status": "done", "subject": {"reference": "Patient/p"}},
            "ImagingStudy.status",
        ),
        (
            {"resourceType": "Appointment", "status": "confirmed", "participant": [{"status": "accepted"}]},
            "Appointment.status",
        ),
        (
            {"resourceType": "Appointment", "status": "booked", "participant": [{"status": "maybe"}]},
            "Appointment.participant[0].status",
        ),
        (
            {
                "resourceType": "Slot",
                "status": "open",
                "schedule": {"reference": "Schedule/s"},
                "start": "2024-01-01T09:00:00Z",
                "end": "2024-01-01T09:15:00Z",
            },
            "Slot.status",
        ),
        ({"resourceType": "QuestionnaireResponse", "status": "done"}, "QuestionnaireResponse.status"),
        (
            {
                "resourceType": "Questionnaire",
                "status": "active",
                "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "yesno"}]}],
            },
            "Questionnaire.item[0].item[0].type",
        ),
        ({"resourceType": "Patient", "gender": "f"}, "Patient.gender"),
        (
            {"resourceType": "Patient", "identifier": [{"use": "primary", "value": "1"}]},
            "Patient.identifier[0].use",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_code_outside_a_required_binding(sqlite_server: FhirServer, resource: Body, expression: str) -> None:
    outcome = _refused(sqlite_server, "POST", f"/{resource['resourceType']}", 400, expression, json=resource)
    assert outcome["issue"][0]["code"] == "code-invalid"


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        (
            {
                "valueQuantity": {
                    "value": 80,
                    "unit": "beats",
                    "system": "http://unitsofmeasure.org",
                    "code": "beats",
                }
            },
            "Observation.valueQuantity.code",
        ),
        ({"valueQuantity": {"value": 80, "unit": "/min"}}, "Observation.valueQuantity.code"),
        ({"code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]}}, "Observation.code"),
        ({"valueString": "80"}, "Observation.valueString"),
    ],
    ids=["wrong-ucum-unit", "no-ucum-system", "not-a-vital-sign-code", "not-a-quantity"],
)
def test_vital_signs_profile(
    sqlite_server: FhirServer, patient_id: str, change: Body, expression: str
) -> None:
    body = {**vital(patient_id), **change}
    if "valueString" in change:
        body.pop("valueQuantity")
    _refused(sqlite_server, "POST", "/Observation", 422, expression, json=body)


def test_vital_signs_need_subject_and_time(sqlite_server: FhirServer, patient_id: str) -> None:
    body = vital(patient_id)
    del body["subject"], body["effectiveDateTime"]
    outcome = _refused(sqlite_server, "POST", "/Observation", 422, "Observation.subject", json=body)
    assert "Observation.effective[x]" in [e for i in outcome["issue"] for e in i["expression"]]


def test_reference_to_nothing(sqlite_server: FhirServer) -> None:
    outcome = _refused(
        sqlite_server, "POST", "/Observation", 422, "Observation.subject", json=vital("no-such-patient")
    )
    assert outcome["issue"][0]["code"] == "not-found"


def test_reference_to_a_type_the_element_does_not_allow(sqlite_server: FhirServer, patient_id: str) -> None:
    body = {**vital(patient_id), "subject": {"reference": f"Appointment/{patient_id}"}}
    _refused(sqlite_server, "POST", "/Observation", 400, "Observation.subject", json=body)


def test_update_with_an_id_that_differs_from_the_url(sqlite_server: FhirServer, patient_id: str) -> None:
    body = {**patient(unique()), "id": "someone-else"}
    _refused(sqlite_server, "PUT", f"/Patient/{patient_id}", 400, "Patient.id", json=body)
    _refused(sqlite_server, "PUT", f"/Patient/{patient_id}", 400, "Patient.id", json=patient(unique()))


def test_if_match_on_a_resource_that_does_not_exist(sqlite_server: FhirServer) -> None:
    body = {**patient(unique()), "id": "never-created"}
    _refused(
        sqlite_server, "PUT", "/Patient/never-created", 412, None, json=body, headers={"If-Match": 'W/"1"'}
    )


def test_unknown_ids_and_versions(sqlite_server: FhirServer, patient_id: str) -> None:
    _refused(sqlite_server, "GET", "/Patient/never-created", 404, None)
    _refused(sqlite_server, "GET", f"/Patient/{patient_id}/_history/7", 404, None)
    _refused(sqlite_server, "GET", "/Patient/never-created/_history", 404, None)


def test_bad_search_parameters(sqlite_server: FhirServer) -> None:
    _refused(sqlite_server, "GET", "/Observation?colour=red", 400, "colour")
    _refused(sqlite_server, "GET", "/Observation?date=yesterday", 400, "date")
    _refused(sqlite_server, "GET", "/Observation?code:fuzzy=1", 400, "code")
    _refused(sqlite_server, "GET", "/Observation?_count=many", 400, "_count")
    _refused(sqlite_server, "GET", "/Observation?_sort=subject", 400, "_sort")
    _refused(sqlite_server, "GET", "/Observation?_include=Observation:code", 400, "_include")


def test_lenient_handling_ignores_unknown_parameters(sqlite_server: FhirServer) -> None:
    with sqlite_server.client() as client:
        response = client.get("/Observation?colour=red&_count=1", headers={"Prefer": "handling=lenient"})
    assert response.status_code == 200
    assert response.json()["type"] == "searchset"


def test_unsupported_interactions_and_formats(sqlite_server: FhirServer, patient_id: str) -> None:
    _refused(sqlite_server, "DELETE", f"/Patient/{patient_id}", 405, None)
    _refused(sqlite_server, "GET", f"/Patient/{patient_id}?_format=xml", 406, None)
    _refused(
        sqlite_server,
        "POST",
        "/Patient",
        415,
        None,
        content=b"<Patient/>",
        headers={"Content-Type": "application/fhir+xml"},
    )
