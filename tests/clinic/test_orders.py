"""Imaging orders in the domain, without HL7: linking to studies in both arrival orders, the study's
priority from its active orders, cancellation, wrong-patient protection, and patient merges."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.imaging.models import Study
from clinic.imaging.service import InstanceMeta, record_instance
from clinic.orders.models import OrderStatus
from clinic.orders.service import OrderControl, OrderError, OrderIn, apply_order, priority_from_code
from clinic.patients.models import Patient
from clinic.patients.service import (
    IdentifierIn,
    PatientDemographics,
    find_patient,
    identify_patient,
    merge_patients,
)
from clinic.radiology.priority import Priority
from clinic.settings import Settings


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _patient(session: Session, mrn: str) -> Patient:
    return identify_patient(session, [IdentifierIn(mrn, "HOSP", "MR")], PatientDemographics("")).patient


def _study(session: Session, mrn: str, accession: str, uid: str = "") -> Study:
    meta = InstanceMeta(
        patient=PatientDemographics(mrn, "HOSP"),
        study_uid=uid or generate_uid(),
        series_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path="x.dcm",
        file_size=1,
        accession_number=accession,
    )
    study = session.get(Study, record_instance(session, meta).study_id)
    assert study is not None
    return study


def test_priority_codes() -> None:
    assert [priority_from_code(c) for c in ("S", "A", "R", "stat", "P", "")] == [
        Priority.STAT,
        Priority.URGENT,
        Priority.ROUTINE,
        Priority.STAT,
        None,
        None,
    ]


def test_the_study_takes_the_highest_priority_of_its_active_orders(factory: sessionmaker[Session]) -> None:
    with unit_of_work(factory) as session:
        patient = _patient(session, "P1")
        routine = apply_order(session, patient.id, OrderControl.NEW, OrderIn("O-1", accession_number="A-1"))
        study = _study(session, "P1", "A-1")  # arrives after the first order: linked on arrival
        assert routine.study_id == study.id and study.order_priority == Priority.ROUTINE
        stat = apply_order(
            session,
            patient.id,
            OrderControl.NEW,
            OrderIn("O-2", accession_number="A-1", priority=Priority.STAT),
        )
        assert stat.study_id == study.id and study.order_priority == Priority.STAT
        apply_order(session, patient.id, OrderControl.CANCEL, OrderIn("O-2"))
        assert stat.status == OrderStatus.REVOKED and study.order_priority == Priority.ROUTINE
        with pytest.raises(OrderError):
            apply_order(session, patient.id, OrderControl.CANCEL, OrderIn("O-404"))


def test_no_link_across_patients_even_after_a_merge_elsewhere(factory: sessionmaker[Session]) -> None:
    with unit_of_work(factory) as session:
        one, other = _patient(session, "P1"), _patient(session, "P2")
        study = _study(session, "P2", "A-9")
        order = apply_order(session, one.id, OrderControl.NEW, OrderIn("O-9", accession_number="A-9"))
        assert order.study_id is None
        merge_patients(session, one, other)  # P2 turns out to be P1: now the link is the same patient
        assert find_patient(session, "P2", "HOSP") == one
        again = apply_order(session, one.id, OrderControl.CHANGE, OrderIn("O-9", priority=Priority.URGENT))
        assert again.study_id == study.id and study.patient_id == one.id
        assert study.order_priority == Priority.URGENT


def test_the_order_reason_for_model_routing(factory: sessionmaker[Session]) -> None:
    """Reason code and text of the active orders, as the worker hands them to the model registry."""
    from clinic.orders.service import order_reason

    with unit_of_work(factory) as session:
        patient = _patient(session, "P5")
        study = _study(session, "P5", "A-5")
        assert order_reason(session, study.id) == ""  # no order: the images alone route models
        apply_order(
            session,
            patient.id,
            OrderControl.NEW,
            OrderIn("O-5", accession_number="A-5", reason_for_exam="R/O Pneumonia", reason_code="J18.9"),
        )
        assert order_reason(session, study.id) == "j18.9|r/o pneumonia"
        apply_order(session, patient.id, OrderControl.CANCEL, OrderIn("O-5"))
        assert order_reason(session, study.id) == ""  # a cancelled order says nothing any more
