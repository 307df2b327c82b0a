"""Inbound HL7 v2 messages, stored raw before they are acknowledged, processed later in order."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class MessageStatus(StrEnum):
    RECEIVED = "received"  # stored and acknowledged (AA/CA), waiting to be processed
    PROCESSED = "processed"
    FAILED = "failed"  # processing failed: reason in ``error``; replayable
    REJECTED = "rejected"  # answered AE/AR at the door; kept so an engineer can see why


class HL7Message(Base):
    """One received message. (MSH-3 sending application, MSH-10 control id) is unique: a repeat
    gets the stored response again and is not processed twice."""

    __tablename__ = "hl7_messages"
    __table_args__ = (
        UniqueConstraint("sending_application", "control_id", name="uq_hl7_messages_sender_control"),
        Index("ix_hl7_messages_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: MSH-3 (namespace id) and MSH-10.
    sending_application: Mapped[str] = mapped_column(String(227), default="")
    sending_facility: Mapped[str] = mapped_column(String(227), default="")
    control_id: Mapped[str] = mapped_column(String(199), default="")
    #: MSH-9, e.g. "ADT^A01^ADT_A01".
    message_type: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[str] = mapped_column(String(16), default="")
    #: MSH-18 as received ("" = ASCII) and the codec used to decode.
    charset: Mapped[str] = mapped_column(String(32), default="")
    #: The message exactly as framed on the wire (bytes between 0x0B and 0x1C 0x0D).
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    peer: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[MessageStatus] = mapped_column(String(16), default=MessageStatus.RECEIVED)
    error: Mapped[str] = mapped_column(Text, default="")
    #: The acknowledgement we sent (repeated verbatim for a duplicate), and its code (AA, CA, AE...).
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    ack: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: What processing reported without failing (e.g. unknown observation codes kept).
    notes: Mapped[str] = mapped_column(Text, default="")


class OutboundHL7(Base):
    """A message we send (ORU^R01 results) to an MLLP destination, with its delivery state."""

    __tablename__ = "hl7_outbound"
    __table_args__ = (Index("ix_hl7_outbound_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    destination: Mapped[str] = mapped_column(String(255))  # host:port
    control_id: Mapped[str] = mapped_column(String(199), unique=True)
    message_type: Mapped[str] = mapped_column(String(64))
    #: What it is about, e.g. ("ai_read", 12) or ("signed_read", 3).
    subject_kind: Mapped[str] = mapped_column(String(32), default="")
    subject_id: Mapped[int | None] = mapped_column(Integer, default=None)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending / sent / failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class OutboundHL7Attempt(Base):
    __tablename__ = "hl7_outbound_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("hl7_outbound.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))  # success / transient / permanent
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    error: Mapped[str] = mapped_column(Text, default="")
