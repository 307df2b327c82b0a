"""Imaging: studies, series and instances as received, with file locations and receive status."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from clinic.db import Base, UTCDateTime, utcnow
from clinic.patients.models import Patient


class ReceiveStatus(StrEnum):
    #: Instances are still arriving (no quiet period has passed since the last one).
    RECEIVING = "receiving"
    #: The quiet period has passed (or the order declared it complete).
    COMPLETE = "complete"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_date: Mapped[dt.date | None] = mapped_column(Date, default=None)
    description: Mapped[str] = mapped_column(String(200), default="")
    #: Order priority (clinic.radiology.priority.Priority); ROUTINE until an order says otherwise.
    order_priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[ReceiveStatus] = mapped_column(String(16), default=ReceiveStatus.RECEIVING)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None, index=True)
    #: Fetched from a PACS as a prior of another study: shown to the radiologist, never analysed.
    is_prior: Mapped[bool] = mapped_column(Boolean, default=False)

    patient: Mapped[Patient] = relationship(lazy="joined")
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.series_number")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (Index("ix_series_status_last", "status", "last_received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    view_position: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, default=None)
    description: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[ReceiveStatus] = mapped_column(String(16), default=ReceiveStatus.RECEIVING)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(
        back_populates="series", order_by="Instance.instance_number"
    )


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, default=None)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    #: Path of the stored Part 10 file, relative to the data dir.
    file_path: Mapped[str] = mapped_column(String(400))
    file_size: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer, default=None)
    columns: Mapped[int | None] = mapped_column(Integer, default=None)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class ReceiveFailure(Base):
    """An object we refused, with the status we answered and why (DESIGN.md §4 rule 4)."""

    __tablename__ = "receive_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: Where it came in: "dicom-cstore", "dicomweb-stow", ...
    channel: Mapped[str] = mapped_column(String(32))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    status_code: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)


class PriorStatus(StrEnum):
    PENDING = "pending"  # found by C-FIND, retrieve requested
    FETCHED = "fetched"  # C-MOVE/C-GET completed
    FAILED = "failed"


class StudyPrior(Base):
    """A previous study of the same patient and modality, found on a PACS for *study_id*."""

    __tablename__ = "study_priors"
    __table_args__ = (UniqueConstraint("study_id", "prior_study_uid", name="uq_study_priors_pair"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    prior_study_uid: Mapped[str] = mapped_column(String(64), index=True)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    prior_study_date: Mapped[dt.date | None] = mapped_column(Date, default=None)
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[PriorStatus] = mapped_column(String(16), default=PriorStatus.PENDING)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    fetched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
