"""Response bodies of the result-delivery admin API (``/api/admin/dicom/deliveries``,
``/api/admin/dicom/build-failures``)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: dt.datetime
    #: ``running``, ``success``, ``transient`` (will retry) or ``permanent`` (refused).
    outcome: str
    #: The C-STORE response status, when the peer answered one.
    status_code: int | None
    error: str
    duration_ms: float | None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    #: ``pending``, ``sent`` or ``failed``.
    status: str
    attempts: int
    last_error: str
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    sent_at: dt.datetime | None
    #: AE title of the destination.
    destination: str
    #: ``SR`` or ``SEG``.
    kind: str
    sop_instance_uid: str
    study_uid: str
    attempt_log: list[AttemptOut]


class ResendOut(BaseModel):
    study_uid: str
    #: Deliveries handed out again (or created for new destinations).
    deliveries: list[int]
    #: Reads of the study whose result objects are built again (they had none).
    rebuilt_reads: list[int]


class BuildFailureOut(BaseModel):
    """A read whose result objects (SR, SEG) could not be built, and why."""

    model_config = ConfigDict(from_attributes=True)

    read_id: int
    study_uid: str
    model_id: str
    model_name: str
    model_version: str
    failed_at: dt.datetime | None
    reason: str
    #: Result objects the read has anyway (0: none; ``resend`` of the study builds them again).
    objects: int
