"""Sample messages and how the mapping tests feed them in: stored as the listener stores them
(an ``HL7Message`` row with the raw bytes and the codec), then mapped by ``process_message`` in one
unit of work, as the processor does."""

from __future__ import annotations

import uuid
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.models import Study
from clinic.imaging.service import InstanceMeta, record_instance
from clinic.messages.models import HL7Message, MessageStatus
from clinic.patients.service import PatientDemographics
from integrations.hl7v2.mapping import process_message

MESSAGES = Path(__file__).resolve().parent / "messages"


def sample(name: str, **replacements: str) -> bytes:
    """A sample message as it comes off the wire: CR segment terminators, UTF-8 (MSH-18)."""
    text = (MESSAGES / name).read_text("utf-8")
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text.replace("\n", "\r").encode("utf-8")


def store(session: Session, raw: bytes, charset: str = "utf-8") -> HL7Message:
    row = HL7Message(
        raw=raw,
        charset=charset,
        sending_application="TEST",
        control_id=uuid.uuid4().hex[:20],
        message_type="",
        status=MessageStatus.RECEIVED,
    )
    session.add(row)
    session.flush()
    return row


def process(factory: sessionmaker[Session], raw: bytes, charset: str = "utf-8") -> str:
    """Store and map one message in one unit of work; the notes."""
    with unit_of_work(factory) as session:
        return process_message(session, store(session, raw, charset))


def record_study(
    factory: sessionmaker[Session],
    *,
    patient: str,
    issuer: str = "",
    accession: str = "",
    study_uid: str = "",
) -> int:
    """Index one (synthetic) instance of a new study the way the SCP does; the study id."""
    study_uid = study_uid or generate_uid()
    meta = InstanceMeta(
        patient=PatientDemographics(identifier=patient, issuer=issuer, name="LEE^MINJI"),
        study_uid=study_uid,
        series_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path=f"dicom/{study_uid}/1.dcm",
        file_size=1,
        modality="DX",
        body_part="CHEST",
        view_position="PA",
        accession_number=accession,
    )
    with unit_of_work(factory) as session:
        return record_instance(session, meta).study_id


def study(factory: sessionmaker[Session], study_id: int) -> Study:
    with unit_of_work(factory) as session:
        found = session.scalars(select(Study).where(Study.id == study_id)).one()
        session.expunge(found)
        return found
