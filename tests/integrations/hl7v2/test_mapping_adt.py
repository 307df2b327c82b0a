"""ADT -> patients, identifiers, encounters and merges, with the sample messages, on SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.encounters.models import Encounter, EncounterStatus
from clinic.imaging.models import Study
from clinic.observations.models import Observation
from clinic.orders.models import ImagingOrder
from clinic.patients.models import Patient, PatientIdentifier
from clinic.patients.service import find_patient
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.tables import ErrorCode
from tests.integrations.hl7v2.mapping_helpers import (
    process,
    record_study,
    sample,
)

UTC = dt.UTC
LEE_IDS = "8007421^^^SMARTHOSP^MR~900312-2345678^^^KR-MOIS^NI"


def _patient(session: Session, identifier: str, issuer: str = "SMARTHOSP") -> Patient:
    patient = find_patient(session, identifier, issuer)
    assert patient is not None
    return patient


def _encounters(session: Session, patient_id: int) -> list[Encounter]:
    return list(
        session.scalars(select(Encounter).where(Encounter.patient_id == patient_id).order_by(Encounter.id))
    )


def test_admit_update_discharge_and_cancel_discharge(session_factory: sessionmaker[Session]) -> None:
    assert process(session_factory, sample("adt_a01_admit.hl7")) == ""
    with unit_of_work(session_factory) as session:
        patient = _patient(session, "8007421")
        assert (patient.name, patient.birth_date, patient.sex) == ("LEE^MINJI", dt.date(1990, 3, 12), "F")
        ids = {(i.issuer, i.value, i.type_code) for i in session.scalars(select(PatientIdentifier))}
        assert ids == {("SMARTHOSP", "8007421", "MR"), ("KR-MOIS", "900312-2345678", "NI")}
        (encounter,) = _encounters(session, patient.id)
        assert encounter.status == EncounterStatus.IN_PROGRESS
        assert (encounter.visit_number, encounter.visit_issuer, encounter.patient_class) == (
            "V2026-11-0042",
            "SMARTHOSP",
            "I",
        )
        assert (encounter.point_of_care, encounter.room, encounter.bed, encounter.facility) == (
            "WARD3",
            "301",
            "A",
            "SMARTHOSP",
        )
        assert (encounter.attending_id, encounter.attending_name) == ("D0143", "PARK^SEOYEON^^DR")
        assert encounter.admitted_at == dt.datetime(2026, 11, 21, 22, 10, tzinfo=UTC)  # PV1-44, +0900

    process(session_factory, sample("adt_a08_update.hl7"))
    with unit_of_work(session_factory) as session:
        patient = _patient(session, "H77120", "SEOULCLINIC")  # a new PID-3 identifier finds the patient
        assert patient.identifier == "8007421" and patient.name == "LEE^MINJI^SO"
        (encounter,) = _encounters(session, patient.id)
        assert (encounter.point_of_care, encounter.room, encounter.bed) == ("ICU", "07", "B")
        assert encounter.attending_id == "D0311" and encounter.status == EncounterStatus.IN_PROGRESS

    process(session_factory, sample("adt_a03_discharge.hl7"))
    with unit_of_work(session_factory) as session:
        (encounter,) = _encounters(session, _patient(session, "8007421").id)
        assert encounter.status == EncounterStatus.FINISHED
        assert encounter.discharged_at == dt.datetime(2026, 11, 26, 4, 55, tzinfo=UTC)  # PV1-45

    process(session_factory, sample("adt_a13_cancel_discharge.hl7"))
    with unit_of_work(session_factory) as session:
        (encounter,) = _encounters(session, _patient(session, "8007421").id)
        assert encounter.status == EncounterStatus.IN_PROGRESS and encounter.discharged_at is None
        assert session.scalar(select(func.count()).select_from(Patient)) == 1


def test_register_then_cancel_admit(sqlite_factory: sessionmaker[Session]) -> None:
    session_factory = sqlite_factory
    process(session_factory, sample("adt_a04_register.hl7"))
    with unit_of_work(session_factory) as session:
        (encounter,) = _encounters(session, _patient(session, "5512093").id)
        assert (encounter.status, encounter.patient_class) == (EncounterStatus.IN_PROGRESS, "O")
    process(session_factory, sample("adt_a11_cancel_admit.hl7"))
    with unit_of_work(session_factory) as session:
        (encounter,) = _encounters(session, _patient(session, "5512093").id)
        assert encounter.status == EncounterStatus.CANCELLED


def _prior_patient_data(factory: sessionmaker[Session]) -> int:
    """A duplicate registration T0999001 with an encounter, a study, an order and vitals."""
    process(
        factory,
        sample("adt_a01_admit.hl7", **{LEE_IDS: "T0999001^^^SMARTHOSP^MR", "V2026-11-0042": "V-DUP-1"}),
    )
    study_id = record_study(factory, patient="T0999001", issuer="SMARTHOSP", accession="ACC-DUP-1")
    process(
        factory,
        sample(
            "orm_o01_cxr.hl7",
            **{
                "8007421^^^SMARTHOSP^MR": "T0999001^^^SMARTHOSP^MR",
                "PO-20261122-0017": "PO-DUP-1",
                "ACC-7730012": "ACC-DUP-1",
            },
        ),
    )
    process(factory, sample("oru_r01_pcd01_mdc.hl7", **{LEE_IDS: "T0999001^^^SMARTHOSP^MR"}))
    return study_id


def test_merge_moves_studies_encounters_orders_observations_and_identifiers(
    session_factory: sessionmaker[Session],
) -> None:
    process(session_factory, sample("adt_a01_admit.hl7"))
    process(session_factory, sample("oru_r01_pcd01_mdc.hl7"))  # the survivor holds the same readings
    study_id = _prior_patient_data(session_factory)
    with unit_of_work(session_factory) as session:
        prior_id = _patient(session, "T0999001").id
        survivor_id = _patient(session, "8007421").id
        assert prior_id != survivor_id

    notes = process(session_factory, sample("adt_a40_merge.hl7"))
    assert f"patient {prior_id} merged into {survivor_id}" in notes

    with unit_of_work(session_factory) as session:
        prior = session.get(Patient, prior_id)
        assert prior is not None and not prior.active and prior.merged_into_id == survivor_id
        assert _patient(session, "T0999001").id == survivor_id  # the old identifier finds the survivor
        study = session.get(Study, study_id)
        assert study is not None and study.patient_id == survivor_id
        assert len(_encounters(session, survivor_id)) == 2 and not _encounters(session, prior_id)
        orders = session.scalars(select(ImagingOrder)).all()
        assert [o.patient_id for o in orders] == [survivor_id]
        counts = dict(
            session.execute(
                select(Observation.patient_id, func.count()).group_by(Observation.patient_id)
            ).all()
        )
        assert counts == {survivor_id: 10}  # the prior's identical readings were not doubled
        owners = {i.value: i.patient_id for i in session.scalars(select(PatientIdentifier))}
        assert owners["T0999001"] == survivor_id

    # a study that arrives later under the old identifier lands on the survivor
    late = record_study(session_factory, patient="T0999001", issuer="SMARTHOSP")
    with unit_of_work(session_factory) as session:
        assert session.get(Study, late).patient_id == survivor_id  # type: ignore[union-attr]

    assert "already merged" in process(session_factory, sample("adt_a40_merge.hl7"))


def test_merge_of_an_unknown_prior_patient_is_reported(sqlite_factory: sessionmaker[Session]) -> None:
    session_factory = sqlite_factory
    notes = process(session_factory, sample("adt_a40_merge.hl7"))
    assert "MRG-1 names no patient we know" in notes
    with unit_of_work(session_factory) as session:
        assert _patient(session, "8007421").active  # the survivor is registered all the same


def test_images_without_an_issuer_and_hl7_identifiers_meet_on_one_patient(
    sqlite_factory: sessionmaker[Session],
) -> None:
    session_factory = sqlite_factory
    first = record_study(session_factory, patient="8007421")  # DICOM PatientID, no IssuerOfPatientID
    process(session_factory, sample("adt_a01_admit.hl7"))
    second = record_study(session_factory, patient="8007421")
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 1
        owners = {session.get(Study, s).patient_id for s in (first, second)}  # type: ignore[union-attr]
        assert owners == {_patient(session, "8007421").id}


@pytest.mark.parametrize(
    ("name", "replacements", "location", "code"),
    [
        ("adt_a01_admit.hl7", {LEE_IDS: ""}, "PID-3", ErrorCode.REQUIRED_FIELD_MISSING),
        (
            "adt_a01_admit.hl7",
            {"ADT^A01^ADT_A01": "ADT^A99^ADT_A01"},
            "MSH-9",
            ErrorCode.UNSUPPORTED_EVENT_CODE,
        ),
        (
            "adt_a01_admit.hl7",
            {"ADT^A01^ADT_A01": "SIU^S12^SIU_S12"},
            "MSH-9",
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
        ),
        ("adt_a01_admit.hl7", {"|19900312|": "|1990-03-12|"}, "PID-7", ErrorCode.DATA_TYPE_ERROR),
        (
            "adt_a40_merge.hl7",
            {"MRG|T0999001^^^SMARTHOSP^MR": "MRG|"},
            "MRG-1",
            ErrorCode.REQUIRED_FIELD_MISSING,
        ),
    ],
)
def test_content_faults_are_mapping_errors_with_their_location(
    sqlite_factory: sessionmaker[Session],
    name: str,
    replacements: dict[str, str],
    location: str,
    code: ErrorCode,
) -> None:
    with pytest.raises(MappingError) as caught:
        process(sqlite_factory, sample(name, **replacements))
    assert (caught.value.location, caught.value.code) == (location, code)
    with unit_of_work(sqlite_factory) as session:  # and nothing was written
        assert session.scalar(select(func.count()).select_from(Patient)) == 0
