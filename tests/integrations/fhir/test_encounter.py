"""Encounters ADT opened and closed, as FHIR R4 Encounter (issue 5): class from PV1-2 in v3
ActCode, period, location and attending displays, visit number; search by patient, status, date."""

from __future__ import annotations

import uuid

from tests.integrations.fhir.conftest import FhirServer
from tests.integrations.hl7v2.mapping_helpers import process, sample

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def test_adt_visit_is_an_encounter(any_server: FhirServer) -> None:
    mrn, visit = str(uuid.uuid4().int)[:12], f"V-{uuid.uuid4().hex[:10]}"
    names = {"8007421": mrn, "V2026-11-0042": visit}
    process(any_server.factory, sample("adt_a01_admit.hl7", **names))
    with any_server.client() as client:
        pid = client.get("/Patient", params={"identifier": f"SMARTHOSP|{mrn}"}).json()["entry"][0][
            "resource"
        ]["id"]
        found = client.get("/Encounter", params={"patient": pid}).json()
        assert found["total"] == 1
        encounter = found["entry"][0]["resource"]
        assert encounter["id"].isdigit() and encounter["status"] == "in-progress"
        assert encounter["class"] == {"system": ACT_CODE, "code": "IMP", "display": "inpatient encounter"}
        assert encounter["subject"] == {"reference": f"Patient/{pid}"}
        assert encounter["period"] == {"start": "2026-11-21T22:10:00.000000Z"}
        assert encounter["location"] == [{"location": {"display": "WARD3, room 301, bed A (SMARTHOSP)"}}]
        assert encounter["participant"][0]["individual"]["display"]
        assert encounter["participant"][0]["type"][0]["coding"][0]["code"] == "ATND"
        (identifier,) = encounter["identifier"]
        assert (identifier["system"], identifier["value"]) == ("SMARTHOSP", visit)
        assert client.get("/Encounter", params={"patient": pid, "status": "finished"}).json()["total"] == 0

        process(any_server.factory, sample("adt_a03_discharge.hl7", **names))
        closed = client.get(f"/Encounter/{encounter['id']}")
        assert closed.headers["ETag"] == 'W/"2"'
        assert closed.json()["status"] == "finished"
        assert closed.json()["period"]["end"] == "2026-11-26T04:55:00.000000Z"
        assert closed.json()["location"][0]["location"]["display"].startswith("ICU, room 07, bed B")
        by_status = client.get(
            "/Encounter", params={"subject": f"Patient/{pid}", "status": "finished"}
        ).json()
        assert [e["resource"]["id"] for e in by_status["entry"]] == [encounter["id"]]
        during = [("patient", pid), ("date", "ge2026-11-25"), ("date", "le2026-11-30")]
        assert client.get("/Encounter", params=during).json()["total"] == 1
        assert client.get("/Encounter", params={"patient": pid, "date": "gt2026-11-27"}).json()["total"] == 0
        assert client.get("/Encounter", params={"identifier": f"SMARTHOSP|{visit}"}).json()["total"] == 1
        # ADT's visits are read-only through FHIR.
        refused = client.put(f"/Encounter/{encounter['id']}", json=closed.json())
        assert refused.status_code == 405
