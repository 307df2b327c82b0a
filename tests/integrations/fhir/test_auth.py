"""Bearer tokens, SMART scopes by role, and one audit row per request without patient data."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from clinic.auth.models import Role
from integrations.fhir.scopes import Access, allows
from tests.integrations.fhir.conftest import STORED_ROWS, FhirServer, create, patient, unique, vital

REPORT = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "Chest X-ray"}}
SCHEDULE = {"resourceType": "Schedule", "active": True, "actor": [{"display": "Respiratory clinic room 2"}]}


def _outcome_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    outcome: dict[str, Any] = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome


def test_no_or_bad_token_is_401_with_an_outcome(sqlite_server: FhirServer) -> None:
    with httpx.Client(base_url=sqlite_server.base) as client:
        missing = client.get("/Patient")
        forged = client.get("/Patient", headers={"Authorization": "Bearer not.a.token"})
    for response in (missing, forged):
        assert _outcome_of(response, 401)["issue"][0]["code"] == "login"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_metadata_needs_no_token(sqlite_server: FhirServer) -> None:
    with httpx.Client(base_url=sqlite_server.base) as client:
        assert client.get("/metadata").json()["resourceType"] == "CapabilityStatement"


@pytest.mark.parametrize(
    ("role", "body", "status"),
    [
        (Role.ICU_NURSE, REPORT, 403),
        (Role.ICU_NURSE, SCHEDULE, 403),
        (Role.RADIOLOGIST, REPORT, 201),
        (Role.RADIOLOGIST, SCHEDULE, 403),
        (Role.CLINIC, SCHEDULE, 201),
        (Role.CLINIC, REPORT, 403),
        (Role.ADMIN, REPORT, 201),
    ],
)
def test_write_scopes_by_role(
    sqlite_server: FhirServer, role: Role, body: dict[str, Any], status: int
) -> None:
    with sqlite_server.client(role) as client:
        response = client.post(f"/{body['resourceType']}", json=body)
    assert response.status_code == status, response.text
    if status == 403:
        issue = _outcome_of(response, 403)["issue"][0]
        assert issue["code"] == "forbidden"
        assert f"user/{body['resourceType']}.write" in issue["diagnostics"]


def test_read_scopes_by_role(sqlite_server: FhirServer) -> None:
    pid = str(create(sqlite_server, patient(unique("mrn")))["id"])
    observation = create(sqlite_server, vital(pid))
    with sqlite_server.client(Role.ICU_NURSE) as nurse:
        assert nurse.get(f"/Observation/{observation['id']}").status_code == 200
        assert nurse.post("/Observation", json=vital(pid)).status_code == 201
        _outcome_of(nurse.get("/Appointment"), 403)
    with sqlite_server.client(Role.CLINIC) as clinic:
        assert clinic.get(f"/Observation/{observation['id']}").status_code == 200
    assert allows(Role.ICU_NURSE, "Observation", Access.READ)
    assert not allows(Role.ICU_NURSE, "DiagnosticReport", Access.WRITE)


def test_a_transaction_with_a_forbidden_entry_is_refused_whole(sqlite_server: FhirServer) -> None:
    pid = str(create(sqlite_server, patient(unique("mrn")))["id"])
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": vital(pid), "request": {"method": "POST", "url": "Observation"}},
            {"resource": REPORT, "request": {"method": "POST", "url": "DiagnosticReport"}},
        ],
    }
    before = sqlite_server.count(STORED_ROWS)
    with sqlite_server.client(Role.ICU_NURSE) as nurse:
        _outcome_of(nurse.post("", json=bundle), 403)
    assert sqlite_server.count(STORED_ROWS) == before


def test_every_request_is_audited_once_without_patient_data(sqlite_server: FhirServer) -> None:
    mrn = unique("mrn")
    family = "Audit" + unique("name").replace("-", "")
    body = patient(mrn, name=[{"family": family, "given": ["Jisoo"]}])

    def rows() -> list[Any]:
        with sqlite_server.engine.connect() as conn:
            return list(conn.execute(text("SELECT * FROM audit_events ORDER BY id")).mappings())

    start = len(rows())
    with sqlite_server.client(Role.CLINIC) as client:
        created = client.post("/Patient", json=body).json()
        client.get(f"/Patient/{created['id']}")
        client.get("/Patient", params={"family": family, "identifier": mrn})
        client.put(f"/Patient/{created['id']}", json={**created, "gender": "bogus"})
        client.get(f"/DiagnosticReport/{created['id']}")
    with httpx.Client(base_url=sqlite_server.base) as anonymous:
        anonymous.get(f"/Patient/{created['id']}")
    new = rows()[start:]
    summary = [(r["action"], r["resource_type"], r["resource_id"], r["username"]) for r in new]
    assert summary == [
        ("fhir-create", "Patient", created["id"], "fhir-clinic"),
        ("fhir-read", "Patient", created["id"], "fhir-clinic"),
        ("fhir-search", "Patient", "", "fhir-clinic"),
        ("fhir-update", "Patient", created["id"], "fhir-clinic"),
        ("fhir-read", "DiagnosticReport", created["id"], "fhir-clinic"),
        ("fhir-read", "Patient", created["id"], "anonymous"),
    ]
    assert [r["detail"].split()[1] for r in new] == [
        "status=201",
        "status=200",
        "status=200",
        "status=400",
        "status=404",
        "status=401",
    ]
    text_of_rows = repr(new)
    assert family not in text_of_rows and mrn not in text_of_rows and "Jisoo" not in text_of_rows
