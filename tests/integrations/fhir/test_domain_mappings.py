"""Domain rows as FHIR resources over the live server: an ADT^A01 patient found by identifier, ORU
vitals found by patient and LOINC code, an ORM order as a ServiceRequest, and an AI read from the
DICOM path as a DiagnosticReport that references its ImagingStudy (issue 5, part 2)."""

from __future__ import annotations

import uuid

from fhirpy import SyncFHIRClient

from clinic.ai.models import SYNTHETIC_DISCLAIMER
from clinic.auth.models import Role
from tests.clinic.helpers import add_read, store_cxr
from tests.integrations.fhir.conftest import LOINC, FhirServer
from tests.integrations.hl7v2.mapping_helpers import process, sample


def _mrn() -> str:
    return str(uuid.uuid4().int)[:12]


def test_adt_patient_found_by_identifier_with_fhirpy(sqlite_server: FhirServer) -> None:
    mrn = _mrn()
    process(sqlite_server.factory, sample("adt_a01_admit.hl7", **{"8007421": mrn}))
    client = SyncFHIRClient(sqlite_server.base, authorization=f"Bearer {sqlite_server.tokens[Role.ADMIN]}")
    found = client.resources("Patient").search(identifier=f"SMARTHOSP|{mrn}").fetch_all()
    assert len(found) == 1
    patient = found[0]
    assert (
        patient["gender"] == "female" and patient["birthDate"] == "1990-03-12" and patient["active"] is True
    )
    assert {(i["system"], i["value"]) for i in patient["identifier"]} >= {("SMARTHOSP", mrn)}
    assert patient["name"][0]["family"] == "LEE"
    with sqlite_server.client() as http:
        again = http.get(f"/Patient/{patient['id']}")
        assert again.status_code == 200 and again.headers["ETag"] == f'W/"{patient["meta"]["versionId"]}"'
        assert http.get("/Patient", params={"identifier": f"OTHER|{mrn}"}).json().get("total") == 0


def test_a_patient_changed_after_a_read_is_read_changed(sqlite_server: FhirServer) -> None:
    """The views follow the domain: after a read found every projection current (the sync then
    only looks at recently changed rows), an ADT^A08 that changes the patient, and an ORU that
    adds vitals, show on the next read, as a new version."""
    mrn, national = _mrn(), f"ni-{_mrn()}"
    ids = {"8007421": mrn, "900312-2345678": national}
    process(sqlite_server.factory, sample("adt_a01_admit.hl7", **ids))
    with sqlite_server.client() as http:
        first = http.get("/Patient", params={"identifier": f"SMARTHOSP|{mrn}"}).json()["entry"][0]["resource"]
        assert http.get(f"/Patient/{first['id']}").json()["meta"]["versionId"] == first["meta"]["versionId"]
        assert "H77120" not in {i["value"] for i in first["identifier"]}
        process(sqlite_server.factory, sample("adt_a08_update.hl7", **ids, ADT0000108=f"A08-{mrn}"))
        process(sqlite_server.factory, sample("oru_r01_loinc.hl7", **{"5512093": mrn, "8007421": mrn}))
        changed = http.get(f"/Patient/{first['id']}").json()
        assert int(changed["meta"]["versionId"]) > int(first["meta"]["versionId"])
        assert "H77120" in {i["value"] for i in changed["identifier"]}  # the A08 added it
        vitals = http.get("/Observation", params={"patient": first["id"], "code": f"{LOINC}|8867-4"}).json()
        assert vitals["total"] == 2


def test_oru_vitals_found_by_patient_and_loinc_code(sqlite_server: FhirServer) -> None:
    mrn = _mrn()
    process(sqlite_server.factory, sample("oru_r01_loinc.hl7", **{"5512093": mrn}))
    with sqlite_server.client() as http:
        patient_id = http.get("/Patient", params={"identifier": f"SMARTHOSP|{mrn}"}).json()["entry"][0][
            "resource"
        ]["id"]
        bundle = http.get("/Observation", params={"patient": patient_id, "code": f"{LOINC}|8867-4"}).json()
        assert bundle["total"] == 2  # the message carries two heart rates (OBX 1 and 10)
        values = sorted(e["resource"]["valueQuantity"]["value"] for e in bundle["entry"])
        assert values == [88.0, 96.0]
        heart_rate = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["valueQuantity"]["value"] == 96.0
        )
        assert heart_rate["valueQuantity"] == {
            "value": 96.0,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        }
        assert heart_rate["category"][0]["coding"][0]["code"] == "vital-signs"
        assert heart_rate["subject"] == {"reference": f"Patient/{patient_id}"}
        every = http.get(
            "/Observation",
            params={"subject": f"Patient/{patient_id}", "category": "vital-signs", "date": "ge2026-11-22"},
        ).json()
        assert every["total"] >= 2 and all(
            e["resource"]["subject"]["reference"] == f"Patient/{patient_id}" for e in every["entry"]
        )
        assert (
            http.get("/Observation", params={"patient": patient_id, "date": "lt2026-11-01"}).json()["total"]
            == 0
        )


def test_orm_order_is_a_service_request(sqlite_server: FhirServer) -> None:
    mrn, placer = _mrn(), f"PO-{uuid.uuid4().hex[:8]}"
    process(
        sqlite_server.factory,
        sample(
            "orm_o01_cxr.hl7", **{"8007421": mrn, "PO-20261122-0017": placer, "ACC-7730012": f"ACC-{placer}"}
        ),
    )
    with sqlite_server.client() as http:
        bundle = http.get("/ServiceRequest", params={"identifier": f"OCS|{placer}"}).json()
        assert bundle["total"] == 1
        order = bundle["entry"][0]["resource"]
        assert order["intent"] == "order" and order["status"] == "active" and order["priority"] == "stat"
        assert order["code"]["coding"][0] == {
            "system": LOINC,
            "code": "36643-5",
            "display": "XR Chest 2 Views",
        }
        assert {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": f"ACC-{placer}",
        } in order["identifier"]
        assert order["reasonCode"][0] == {"coding": [{"code": "J18.9"}], "text": "r/o pneumonia"}


def test_ai_read_is_a_diagnostic_report_referencing_its_imaging_study(sqlite_server: FhirServer) -> None:
    mrn = _mrn()
    stored = store_cxr(sqlite_server.settings, sqlite_server.factory, patient=mrn)
    add_read(
        sqlite_server.settings,
        sqlite_server.factory,
        stored,
        [("pneumothorax", "Pneumothorax", 0.91, 0.5, 2), ("effusion", "Effusion", 0.12, 0.5, 1)],
        heatmaps=False,
    )
    with sqlite_server.client() as http:
        bundle = http.get(
            "/DiagnosticReport",
            params={
                "patient": str(stored.patient_id),
                "category": "RAD",
                "_include": "DiagnosticReport:imaging-study",
            },
        ).json()
        reports = [
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
        ]
        assert len(reports) == 1
        report = reports[0]
        assert report["status"] == "preliminary" and SYNTHETIC_DISCLAIMER in report["conclusion"]
        assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{stored.study_id}"}]
        findings = {
            c["code"]["coding"][0]["code"]: c
            for c in report["contained"]
            if c["resourceType"] == "Observation"
        }
        assert findings["pneumothorax"]["interpretation"][0]["coding"][0]["code"] == "POS"
        assert findings["effusion"]["interpretation"][0]["coding"][0]["code"] == "NEG"
        assert findings["pneumothorax"]["valueQuantity"]["value"] == 0.91 and report["result"]
        included = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
        study = http.get(f"/ImagingStudy/{stored.study_id}").json()
        assert included == [study]
        with sqlite_server.factory() as session:
            from clinic.imaging.models import Study

            uid = session.get(Study, stored.study_id).study_uid  # type: ignore[union-attr]
        assert study["identifier"][0]["value"] == f"urn:oid:{uid}"
        assert (
            study["series"][0]["instance"][0]["uid"] == stored.sop_instance_uid
            and study["numberOfInstances"] == 1
        )
        by_uid = http.get("/ImagingStudy", params={"identifier": f"urn:oid:{uid}"}).json()
        assert [e["resource"]["id"] for e in by_uid["entry"]] == [str(stored.study_id)]
