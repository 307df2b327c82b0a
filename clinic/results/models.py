"""Result objects written for AI reads, and every attempt to deliver them (DESIGN.md §4 rule 4)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from clinic.db import Base, UTCDateTime, utcnow


class ResultKind(StrEnum):
    SR = "SR"  # Comprehensive 3D SR, TID 1500 Measurement Report
    SEG = "SEG"  # Segmentation


class ResultObject(Base):
    """A DICOM object we wrote for an AI read; also an instance of its study (for DICOMweb)."""

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    read_id: Mapped[int] = mapped_column(ForeignKey("ai_reads.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    #: The stored object as an instance of the study (file path, SOP UIDs live there).
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), default=None)
    kind: Mapped[ResultKind] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    #: The object this one revises (Predecessor Documents Sequence), if any.
    predecessor_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanently refused by the destination; replayable


class Delivery(Base):
    """One result object to one destination AE; retried with backoff until sent or refused."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("result_object_id", "remote_ae_id", name="uq_deliveries_object_destination"),
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    result_object_id: Mapped[int] = mapped_column(ForeignKey("result_objects.id"))
    remote_ae_id: Mapped[int] = mapped_column(ForeignKey("remote_aes.id"), index=True)
    status: Mapped[DeliveryStatus] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    attempt_log: Mapped[list[DeliveryAttempt]] = relationship(
        back_populates="delivery", order_by="DeliveryAttempt.id", cascade="all, delete-orphan"
    )


class DeliveryAttempt(Base):
    """Each try, with the peer's answer: a DICOM status code or the network error."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: "success", "transient" (will retry) or "permanent" (refused).
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[float | None] = mapped_column(default=None)

    delivery: Mapped[Delivery] = relationship(back_populates="attempt_log")
