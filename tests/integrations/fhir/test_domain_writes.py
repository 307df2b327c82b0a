"""FHIR writes reach the domain (issue 5): a POSTed Patient is the patient ADT and DICOM use, a
POSTed vital sign is an observation the ICU scores, and the views of the platform's own records
(ImagingStudy, DiagnosticReport of an AI read, ServiceRequest from HL7) are read-only."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from clinic.observations.models import Observation, VitalSign
from clinic.patients.models import Patient, PatientIdentifier
from tests.clinic.helpers import add_read, store_cxr
from tests.integrations.fhir.conftest import CATEGORY, LOINC, MRN, FhirServer, patient, unique, vital
from tests.integrations.hl7v2.mapping_helpers import process, sample


def _domain_patient(server: FhirServer, patient_id: str) -> tuple[Patient, list[PatientIdentifier]]:
    with server.factory() as session:
        row = session.get(Patient, int(patient_id))
        assert row is not None
        idents = list(
            session.scalars(select(PatientIdentifier).where(PatientIdentifier.patient_id == row.id))
        )
        session.expunge_all()
        return row, idents


def test_posted_patient_is_a_domain_patient(any_server: FhirServer) -> None:
    mrn = unique("mrn")
    body = patient(mrn, telecom=[{"system": "phone", "value": "010-0000-0000"}])
    with any_server.client() as client:
        created = client.post("/Patient", json=body)
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        assert pid.isdigit() and created.headers["Location"].endswith(f"/Patient/{pid}/_history/1")
        row, idents = _domain_patient(any_server, pid)
        assert (row.identifier, row.issuer, row.name, row.sex) == (mrn, MRN, "Park^Minji", "F")
        assert row.birth_date == dt.date(1971, 5, 6)
        assert {(i.issuer, i.value) for i in idents} == {(MRN, mrn)}
        # What the domain has no column for is kept in the resource.
        assert created.json()["telecom"] == body["telecom"]
        # The same identifier again is the same patient, never a second one.
        again = client.post("/Patient", json=patient(mrn) | {"gender": "other"})
        assert again.status_code == 201 and again.json()["id"] == pid
        assert _domain_patient(any_server, pid)[0].sex == "O"
        # PUT updates the domain row; the version numbers go on.
        current = client.get(f"/Patient/{pid}").json()
        put = client.put(f"/Patient/{pid}", json={**current, "gender": "male", "birthDate": "1971-05-07"})
        assert put.status_code == 200 and put.headers["ETag"] == 'W/"3"'
        row, _ = _domain_patient(any_server, pid)
        assert (row.sex, row.birth_date) == ("M", dt.date(1971, 5, 7))
        assert client.get(f"/Patient/{pid}").json()["gender"] == "male"


def test_patient_ids_are_the_platforms(sqlite_server: FhirServer) -> None:
    logical_id = unique("pt")
    with sqlite_server.client() as client:
        refused = client.put(f"/Patient/{logical_id}", json={**patient(unique()), "id": logical_id})
        assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
        assert refused.json()["issue"][0]["code"] == "not-supported"
        assert (
            client.put("/Patient/987654321", json={**patient(unique()), "id": "987654321"}).status_code == 405
        )
        no_identifier = client.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert no_identifier.status_code == 422
        assert no_identifier.json()["issue"][0]["expression"] == ["Patient.identifier"]
        assert client.get(f"/Patient/{logical_id}").status_code == 404


def test_fhir_post_finds_the_adt_patient(sqlite_server: FhirServer) -> None:
    mrn = str(unique("")).replace("-", "")[:12]
    # the sample's national id too: other tests admit it on this server
    national = unique("ni")
    process(
        sqlite_server.factory, sample("adt_a01_admit.hl7", **{"8007421": mrn, "900312-2345678": national})
    )
    with sqlite_server.client() as client:
        adt = client.get("/Patient", params={"identifier": f"SMARTHOSP|{mrn}"}).json()["entry"][0]["resource"]
        posted = client.post(
            "/Patient",
            json={"resourceType": "Patient", "identifier": [{"system": "SMARTHOSP", "value": mrn}]},
        )
        assert posted.status_code == 201 and posted.json()["id"] == adt["id"]
        # Demographics ADT gave are kept when the FHIR client sends none.
        assert posted.json()["birthDate"] == "1990-03-12"


def test_vital_sign_becomes_a_domain_observation(any_server: FhirServer) -> None:
    with any_server.client() as client:
        pid = client.post("/Patient", json=patient(unique("mrn"))).json()["id"]
        body = vital(pid, "59408-5", 91, "%", "2024-03-01T10:00:00+09:00", note=[{"text": "after walk"}])
        created = client.post("/Observation", json=body)
        assert created.status_code == 201, created.text
        oid = created.json()["id"]
        assert oid.isdigit() and created.headers["Location"].endswith(f"/Observation/{oid}/_history/1")
        with any_server.factory() as session:
            row = session.get(Observation, int(oid))
            assert row is not None
            assert (row.patient_id, row.code, row.value, row.unit, row.source) == (
                int(pid),
                VitalSign.SPO2,
                91.0,
                "%",
                "fhir",
            )
            assert row.observed_at == dt.datetime(2024, 3, 1, 1, 0, tzinfo=dt.UTC)
        read = client.get(f"/Observation/{oid}").json()
        assert read["valueQuantity"]["value"] == 91.0 and read["note"] == [{"text": "after walk"}]
        assert read["effectiveDateTime"] == "2024-03-01T01:00:00Z"
        # The same observation again updates the one row.
        again = client.post(
            "/Observation", json=body | {"valueQuantity": {**read["valueQuantity"], "value": 92}}
        )
        assert again.json()["id"] == oid
        # A domain observation is read-only through PUT.
        put = client.put(f"/Observation/{oid}", json=read)
        assert put.status_code == 405 and "read-only" in put.json()["issue"][0]["diagnostics"]
        # Not a vital sign: generic-stored, as before.
        lab = vital(pid, "2345-7", 5.4, "mmol/L") | {
            "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}]
        }
        generic = client.post("/Observation", json=lab)
        assert generic.status_code == 201 and not generic.json()["id"].isdigit()


def test_vital_sign_subject_must_be_a_patient(sqlite_server: FhirServer) -> None:
    with sqlite_server.client() as client:
        missing = client.post("/Observation", json=vital("987654321"))
        assert missing.status_code == 422
        assert missing.json()["issue"][0]["expression"] == ["Observation.subject"]


def test_transaction_patient_and_vitals_reach_the_domain(sqlite_server: FhirServer) -> None:
    mrn = unique("mrn")
    urn = "urn:uuid:4b0f5a62-1111-4c3e-9d1a-000000000001"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            # the observation first: the server still writes the patient before it
            {
                "resource": vital("x", "8867-4", 118) | {"subject": {"reference": urn}},
                "request": {"method": "POST", "url": "Observation"},
            },
            {"fullUrl": urn, "resource": patient(mrn), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    with sqlite_server.client() as client:
        response = client.post("", json=bundle)
        assert response.status_code == 200, response.text
        observation, created = (e["resource"] for e in response.json()["entry"])
        assert created["id"].isdigit() and observation["subject"] == {"reference": f"Patient/{created['id']}"}
    with sqlite_server.factory() as session:
        rows = session.scalars(select(Observation).where(Observation.patient_id == int(created["id"]))).all()
        assert [(r.code, r.value, r.source) for r in rows] == [(VitalSign.HEART_RATE, 118.0, "fhir")]


def test_transaction_of_vitals_written_together(any_server: FhirServer) -> None:
    """A Bundle of vital signs is written as one batch: new rows, a repeat of a stored
    observation (updates it, same id, next version), the same observation twice in the Bundle
    (one row), and an Observation that is no vital sign (generic) keep their entry order."""

    def post(resource: dict[str, object]) -> dict[str, object]:
        return {"resource": resource, "request": {"method": "POST", "url": "Observation"}}

    with any_server.client() as client:
        pid = client.post("/Patient", json=patient(unique("mrn"))).json()["id"]
        earlier = client.post("/Observation", json=vital(pid, "9279-1", 14, when="2024-03-01T09:00:00Z"))
        assert earlier.status_code == 201
        times = [f"2024-03-01T10:{m:02d}:00Z" for m in range(5)]
        lab = vital(pid, "2345-7", 5.4, "mmol/L") | {
            "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}]
        }
        entries = [post(vital(pid, "8867-4", 70 + n, when=t)) for n, t in enumerate(times)]
        entries += [
            post(vital(pid, "9279-1", 22, when="2024-03-01T09:00:00Z")),  # the stored one, corrected
            post(lab),
            post(vital(pid, "59408-5", 93, "%", when=times[0])),
            post(vital(pid, "59408-5", 94, "%", when=times[0])),  # the same key again: the last wins
        ]
        response = client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert response.status_code == 200, response.text
        results = [e["resource"] for e in response.json()["entry"]]
        assert [r["valueQuantity"]["value"] for r in results[:5]] == [70, 71, 72, 73, 74]
        assert results[5]["id"] == earlier.json()["id"] and results[5]["meta"]["versionId"] == "2"
        assert results[5]["valueQuantity"]["value"] == 22
        assert not results[6]["id"].isdigit()
        assert results[7]["id"] == results[8]["id"]
        assert all(r["id"].isdigit() for i, r in enumerate(results) if i != 6)
        found = client.get("/Observation", params={"patient": pid, "code": f"{LOINC}|8867-4"}).json()
        assert sorted(e["resource"]["id"] for e in found["entry"]) == sorted(r["id"] for r in results[:5])
    with any_server.factory() as session:
        rows = session.scalars(select(Observation).where(Observation.patient_id == int(pid))).all()
        by_code = sorted((r.code, r.value) for r in rows)
        assert by_code == sorted(
            [(VitalSign.HEART_RATE, 70.0 + n) for n in range(5)]
            + [(VitalSign.RESPIRATORY_RATE, 22.0), (VitalSign.SPO2, 94.0)]
        )


def test_views_of_platform_records_are_read_only(sqlite_server: FhirServer) -> None:
    stored = store_cxr(sqlite_server.settings, sqlite_server.factory, patient=unique("cxr"))
    add_read(
        sqlite_server.settings,
        sqlite_server.factory,
        stored,
        [("nodule", "Nodule", 0.7, 0.5, 1)],
        heatmaps=False,
    )
    with sqlite_server.client() as client:
        study = client.get(f"/ImagingStudy/{stored.study_id}").json()
        refused = client.put(f"/ImagingStudy/{stored.study_id}", json={**study, "description": "edited"})
        assert refused.status_code == 405, refused.text
        assert "read-only" in refused.json()["issue"][0]["diagnostics"]
        report = client.get("/DiagnosticReport", params={"patient": str(stored.patient_id)}).json()["entry"][
            0
        ]
        rid = report["resource"]["id"]
        assert client.put(f"/DiagnosticReport/{rid}", json=report["resource"]).status_code == 405
        assert client.get(f"/ImagingStudy/{stored.study_id}").json()["meta"] == study["meta"]
        # Generic resources of those types stay writable under their uuids.
        generic = client.post(
            "/DiagnosticReport",
            json={
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "18748-4"}]},
            },
        )
        assert generic.status_code == 201
        body = generic.json() | {"status": "amended"}
        assert client.put(f"/DiagnosticReport/{body['id']}", json=body).status_code == 200
