"""ORM^O01 / OMI^O23 -> imaging orders, linked to their studies whichever arrives first, feeding the
worklist's order priority; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.orders.models import ImagingOrder, OrderStatus
from clinic.radiology.priority import Priority
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.tables import ErrorCode
from tests.integrations.hl7v2.mapping_helpers import (
    process,
    record_study,
    sample,
    study,
)

CXR_UID = "1.2.410.200010.20261122.7730012"  # ZDS-1 of orm_o01_cxr.hl7
CT_UID = "1.2.410.200010.20261122.7730044"  # IPC-3 of omi_o23_ct.hl7


def _order(factory: sessionmaker[Session], placer: str) -> ImagingOrder:
    with unit_of_work(factory) as session:
        order = session.scalars(select(ImagingOrder).where(ImagingOrder.placer_order_number == placer)).one()
        session.expunge(order)
        return order


def test_order_first_then_study_then_cancel(session_factory: sessionmaker[Session]) -> None:
    process(session_factory, sample("adt_a01_admit.hl7"))
    process(session_factory, sample("orm_o01_cxr.hl7"))
    order = _order(session_factory, "PO-20261122-0017")
    assert (order.placer_issuer, order.accession_number, order.study_uid) == ("OCS", "ACC-7730012", CXR_UID)
    assert (order.procedure_code, order.procedure_text, order.procedure_system) == (
        "36643-5",
        "XR Chest 2 Views",
        "LN",
    )
    assert (order.reason_for_exam, order.reason_code) == ("r/o pneumonia", "J18.9")  # OBR-31
    assert order.priority == Priority.STAT  # ORC-7.6 S
    assert (order.ordering_provider_id, order.ordering_provider_name) == ("D0143", "PARK^SEOYEON^^DR")
    assert order.ordered_at == dt.datetime(2026, 11, 21, 22, 30, tzinfo=dt.UTC)
    assert order.encounter_id is not None and order.study_id is None and order.status == OrderStatus.ACTIVE

    # the modality sends the images with the worklist's UID and accession number
    study_id = record_study(session_factory, patient="8007421", accession="ACC-7730012", study_uid=CXR_UID)
    assert _order(session_factory, "PO-20261122-0017").study_id == study_id
    assert study(session_factory, study_id).order_priority == Priority.STAT

    cancel = sample("orm_o01_cxr.hl7", **{"ORC|NW|": "ORC|CA|", "^^^^^S": "", "ORM0000201": "ORM0000202"})
    process(session_factory, cancel)
    assert _order(session_factory, "PO-20261122-0017").status == OrderStatus.REVOKED
    assert (
        study(session_factory, study_id).order_priority == Priority.ROUTINE
    )  # the cancelled order gives it back


def test_study_first_then_order(session_factory: sessionmaker[Session]) -> None:
    # images of a patient the RIS has not announced yet, from a modality without IssuerOfPatientID
    study_id = record_study(session_factory, patient="5512093", accession="ACC-7730044", study_uid=CT_UID)
    assert study(session_factory, study_id).order_priority == Priority.ROUTINE
    notes = process(session_factory, sample("omi_o23_ct.hl7"))
    order = _order(session_factory, "PO-20261122-0031")
    assert notes == f"order {order.id} linked to study {study_id}"
    assert order.study_id == study_id and order.priority == Priority.URGENT  # TQ1-9 A (ASAP)
    assert (order.filler_order_number, order.modality) == ("FO-88120", "CT")
    assert order.reason_for_exam == "chronic cough; solitary pulmonary nodule on prior CXR"
    assert study(session_factory, study_id).order_priority == Priority.URGENT
    assert study(session_factory, study_id).patient_id == order.patient_id


def test_accession_number_links_a_study_with_its_own_uid(sqlite_factory: sessionmaker[Session]) -> None:
    process(sqlite_factory, sample("orm_o01_cxr.hl7"))
    study_id = record_study(sqlite_factory, patient="8007421", issuer="SMARTHOSP", accession="ACC-7730012")
    assert _order(sqlite_factory, "PO-20261122-0017").study_id == study_id


def test_a_study_of_another_patient_is_never_linked(sqlite_factory: sessionmaker[Session]) -> None:
    study_id = record_study(sqlite_factory, patient="OTHER-1", issuer="SMARTHOSP", accession="ACC-7730012")
    process(sqlite_factory, sample("orm_o01_cxr.hl7", ZDS="NTE"))  # no study UID: by accession
    assert _order(sqlite_factory, "PO-20261122-0017").study_id is None
    assert study(sqlite_factory, study_id).order_priority == Priority.ROUTINE


def test_change_and_status_messages(sqlite_factory: sessionmaker[Session]) -> None:
    process(sqlite_factory, sample("omi_o23_ct.hl7"))
    process(
        sqlite_factory, sample("omi_o23_ct.hl7", **{"ORC|NW|": "ORC|XO|", "A^ASAP^HL70485": "S^STAT^HL70485"})
    )
    assert _order(sqlite_factory, "PO-20261122-0031").priority == Priority.STAT
    process(sqlite_factory, sample("omi_o23_ct.hl7", **{"ORC|NW|": "ORC|SC|", "|SC||||": "|CM||||"}))
    assert _order(sqlite_factory, "PO-20261122-0031").status == OrderStatus.COMPLETED


def test_cancel_of_an_order_never_placed(sqlite_factory: sessionmaker[Session]) -> None:
    with pytest.raises(MappingError) as caught:
        process(sqlite_factory, sample("orm_o01_cxr.hl7", **{"ORC|NW|": "ORC|CA|"}))
    assert (caught.value.code, caught.value.location) == (ErrorCode.UNKNOWN_KEY_IDENTIFIER, "ORC-2")
