"""Transaction and batch Bundles: urn:uuid references rewritten, all or nothing for transactions,
entry by entry for batches (FHIR R4 http.html §3.1.0.11)."""

from __future__ import annotations

from typing import Any

from tests.integrations.fhir.conftest import MRN, STORED_ROWS, FhirServer, create, patient, unique, vital

PATIENT_URN = "urn:uuid:0c3f7a52-6a1e-4d0e-9f51-3f1d2c6b9a01"
ENCOUNTER_URN = "urn:uuid:0c3f7a52-6a1e-4d0e-9f51-3f1d2c6b9a02"


def _post(server: FhirServer, bundle: dict[str, Any], **headers: str) -> Any:
    with server.client() as client:
        return client.post("", json=bundle, headers=headers)


def _admission(mrn: str) -> dict[str, Any]:
    """A patient, an encounter and two vitals that refer to each other by urn:uuid."""
    observation = vital("placeholder")
    observation["subject"] = {"reference": PATIENT_URN}
    observation["encounter"] = {"reference": ENCOUNTER_URN}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": ENCOUNTER_URN,
                "request": {"method": "POST", "url": "Encounter"},
                "resource": {
                    "resourceType": "Encounter",
                    "status": "in-progress",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                    "subject": {"reference": PATIENT_URN},
                },
            },
            {"request": {"method": "POST", "url": "Observation"}, "resource": observation},
            {
                "request": {"method": "POST", "url": "Observation"},
                "resource": {**observation, "effectiveDateTime": "2024-03-01T11:00:00Z"},
            },
            {
                "fullUrl": PATIENT_URN,
                "request": {"method": "POST", "url": "Patient"},
                "resource": patient(mrn),
            },
            {"request": {"method": "GET", "url": f"Patient?identifier={MRN}|{mrn}"}},
        ],
    }


def _versions(server: FhirServer) -> int:
    return server.count(STORED_ROWS)


def test_transaction_rewrites_urn_uuid_references(any_server: FhirServer) -> None:
    mrn = unique("mrn")
    response = _post(any_server, _admission(mrn))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created", "201 Created", "200 OK"]
    patient_id = result["entry"][3]["resource"]["id"]
    encounter_id = result["entry"][0]["resource"]["id"]
    assert result["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    for entry in result["entry"][1:3]:
        assert entry["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
        assert entry["resource"]["encounter"]["reference"] == f"Encounter/{encounter_id}"
        assert entry["response"]["location"].startswith("Observation/")
        assert entry["response"]["etag"] == 'W/"1"'
    # GET entries run after the writes: the search sees the new patient.
    searched = result["entry"][4]["resource"]
    assert searched["type"] == "searchset" and searched["entry"][0]["resource"]["id"] == patient_id
    with any_server.client() as client:
        found = client.get("/Observation", params={"patient": patient_id, "encounter": encounter_id}).json()
    assert found["total"] == 2


def test_transaction_with_one_invalid_entry_changes_nothing(any_server: FhirServer) -> None:
    bundle = _admission(unique("mrn"))
    bundle["entry"][2]["resource"]["status"] = "this_is_invalid"
    before = _versions(any_server)
    response = _post(any_server, bundle)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[2].resource.status"]
    assert _versions(any_server) == before


def test_transaction_with_a_reference_to_nothing_changes_nothing(any_server: FhirServer) -> None:
    bundle = _admission(unique("mrn"))
    bundle["entry"][1]["resource"]["subject"] = {"reference": "urn:uuid:0c3f7a52-6a1e-4d0e-9f51-3f1d2c6b9aff"}
    before = _versions(any_server)
    response = _post(any_server, bundle)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.subject"]
    assert _versions(any_server) == before


def test_transaction_conditional_entries_and_minimal_return(sqlite_server: FhirServer) -> None:
    mrn = unique("mrn")
    existing = create(sqlite_server, patient(mrn))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": PATIENT_URN,
                "resource": patient(mrn),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|{mrn}"},
            },
            {
                "resource": vital("x") | {"subject": {"reference": PATIENT_URN}},
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": patient(mrn) | {"gender": "other"},
                "request": {"method": "PUT", "url": f"Patient?identifier={MRN}|{mrn}"},
            },
        ],
    }
    response = _post(sqlite_server, bundle, Prefer="return=minimal")
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "201 Created", "200 OK"]
    assert all("resource" not in e for e in entries)
    assert entries[0]["response"]["location"].startswith(f"Patient/{existing['id']}/")
    assert entries[2]["response"]["etag"] == 'W/"2"'
    with sqlite_server.client() as client:
        observation = client.get("/" + entries[1]["response"]["location"].split("/_history")[0]).json()
    assert observation["subject"]["reference"] == f"Patient/{existing['id']}"


def test_batch_runs_entries_on_their_own(sqlite_server: FhirServer) -> None:
    mrn = unique("mrn")
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(mrn), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": patient(unique()) | {"gender": "f"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ],
    }
    response = _post(sqlite_server, bundle)
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "400 Bad Request", "404 Not Found"]
    assert entries[1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]
    with sqlite_server.client() as client:
        assert client.get("/Patient", params={"identifier": mrn}).json()["total"] == 1


def test_bundles_we_do_not_process(sqlite_server: FhirServer) -> None:
    collection = {"resourceType": "Bundle", "type": "collection", "entry": []}
    assert _post(sqlite_server, collection).status_code == 400
    delete = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Patient/1"}}],
    }
    response = _post(sqlite_server, delete)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].request.method"]
    unknown = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "POST", "url": "Patient"}, "resource": patient("x"), "colour": 1}],
    }
    response = _post(sqlite_server, unknown)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].colour"]
