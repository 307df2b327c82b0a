"""Versions: vread of every version, instance and type history newest first, headers and Prefer
(FHIR R4 http.html §3.1.0.3, §3.1.0.11)."""

from __future__ import annotations

from tests.integrations.fhir.conftest import FhirServer, patient, unique


def test_versions_history_and_headers(any_server: FhirServer) -> None:
    with any_server.client() as client:
        created = client.post("/Patient", json=patient(unique("mrn")))
        assert created.status_code == 201
        assert created.headers["ETag"] == 'W/"1"' and created.headers["Last-Modified"].endswith("GMT")
        pid = created.json()["id"]
        assert created.headers["Location"].endswith(f"/Patient/{pid}/_history/1")
        body = created.json()
        for gender in ("male", "other"):
            body = client.put(f"/Patient/{pid}", json={**body, "gender": gender}).json()
        minimal = client.put(f"/Patient/{pid}", json=body, headers={"Prefer": "return=minimal"})
        assert minimal.status_code == 200 and minimal.content == b"" and minimal.headers["ETag"] == 'W/"4"'
        outcome = client.put(f"/Patient/{pid}", json=body, headers={"Prefer": "return=OperationOutcome"})
        assert outcome.json()["resourceType"] == "OperationOutcome"
        assert [client.get(f"/Patient/{pid}/_history/{v}").json()["gender"] for v in (1, 2, 3)] == [
            "female",
            "male",
            "other",
        ]
        history = client.get(f"/Patient/{pid}/_history", params={"_count": 2}).json()
        assert history["type"] == "history" and history["total"] == 5
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["5", "4"]
        assert {link["relation"] for link in history["link"]} == {"self", "next"}
        full = client.get(f"/Patient/{pid}/_history").json()
        assert [e["request"]["method"] for e in full["entry"]] == ["PUT", "PUT", "PUT", "PUT", "POST"]
        assert full["entry"][-1]["response"]["status"] == "201 Created"
        since = full["entry"][1]["resource"]["meta"]["lastUpdated"]
        recent = client.get(f"/Patient/{pid}/_history", params={"_since": since}).json()
        assert recent["total"] == 2
        typed = client.get("/Patient/_history", params={"_count": 50}).json()
        assert {e["resource"]["id"] for e in typed["entry"]} >= {pid}


def test_update_as_create_keeps_the_given_id(any_server: FhirServer) -> None:
    # A generic type: Patient ids are the platform's (issue 5: a FHIR Patient is the patient ADT
    # created), so update-as-create of a Patient is refused (test_domain_writes.py).
    logical_id = unique("q")
    with any_server.client() as client:
        body = {"resourceType": "Questionnaire", "id": logical_id, "status": "active"}
        response = client.put(f"/Questionnaire/{logical_id}", json=body)
        assert response.status_code == 201
        history = client.get(f"/Questionnaire/{logical_id}/_history").json()
    assert history["entry"][0]["request"] == {"method": "PUT", "url": f"Questionnaire/{logical_id}"}
