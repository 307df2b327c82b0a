"""AI analysis: the jobs that ask for it, the reads models return and their findings."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from clinic.db import Base, UTCDateTime, utcnow

#: Shown with every result of a model trained here on synthetic phantoms.
SYNTHETIC_DISCLAIMER = "synthetic demo model — not for clinical use"


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class AnalysisJob(Base):
    """A request to analyse one study. Leases make a killed worker's job run again."""

    __tablename__ = "analysis_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    status: Mapped[JobStatus] = mapped_column(String(16), default=JobStatus.PENDING, index=True)
    #: Higher runs first (a STAT study's inference jumps the queue).
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None, index=True)
    error: Mapped[str] = mapped_column(Text, default="")
    #: The outbox message that last handed the job out; a job still pending long after that
    #: message was published is handed out again (a broker without persistence can lose it).
    outbox_message_id: Mapped[int | None] = mapped_column(Integer, default=None)


class AIRead(Base):
    """One model's read of one study. Unique per (study, model, version): tasks are idempotent."""

    __tablename__ = "ai_reads"
    __table_args__ = (
        UniqueConstraint("study_id", "model_id", "model_version", name="uq_ai_reads_study_model_version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("analysis_jobs.id"), default=None)
    model_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Label shown with the result, e.g. :data:`SYNTHETIC_DISCLAIMER`.
    disclaimer: Mapped[str] = mapped_column(String(200), default="")
    #: The instance the model read.
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    #: The series the model read (a 3D model reads a whole series; a 2D model one instance of it).
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    #: Segmentation label map (uint8, the source series' geometry, .npz), relative to the data dir.
    mask_path: Mapped[str] = mapped_column(String(400), default="")
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    inference_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: Why the read's result objects (SR, SEG) could not be built, when the last build failed for
    #: good (identifiers and the builder's message, never patient data); empty otherwise.
    results_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    #: When that build failed; cleared (with the reason) when a later build succeeds.
    results_failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    findings: Mapped[list[AIFinding]] = relationship(
        back_populates="read", order_by="AIFinding.id", cascade="all, delete-orphan", lazy="selectin"
    )
    measurements: Mapped[list[AIMeasurement]] = relationship(
        back_populates="read", order_by="AIMeasurement.id", cascade="all, delete-orphan", lazy="selectin"
    )


class AIFinding(Base):
    __tablename__ = "ai_findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    read_id: Mapped[int] = mapped_column(ForeignKey("ai_reads.id"), index=True)
    #: Machine code of the finding, e.g. "consolidation", "nodule_mass".
    code: Mapped[str] = mapped_column(String(64))
    #: Display label, e.g. "Consolidation".
    label: Mapped[str] = mapped_column(String(128))
    probability: Mapped[float] = mapped_column(Float)
    #: The operating threshold of this model version for this finding.
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    #: Urgency class when positive (clinic.radiology.priority.Priority value).
    urgency: Mapped[int] = mapped_column(Integer, default=0)
    #: Heatmap (8-bit PNG at model resolution), relative to the data dir.
    heatmap_path: Mapped[str] = mapped_column(String(400), default="")

    read: Mapped[AIRead] = relationship(back_populates="findings")


class AIMeasurement(Base):
    """A number a model measured, e.g. nodule count, largest diameter (mm), volume (mm3).

    ``unit`` is UCUM (``{count}``, ``mm``, ``mm3``); ``finding_code`` ties it to a finding when it
    describes one (empty for read-level measurements).
    """

    __tablename__ = "ai_measurements"

    id: Mapped[int] = mapped_column(primary_key=True)
    read_id: Mapped[int] = mapped_column(ForeignKey("ai_reads.id"), index=True)
    finding_code: Mapped[str] = mapped_column(String(64), default="")
    code: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32))

    read: Mapped[AIRead] = relationship(back_populates="measurements")
