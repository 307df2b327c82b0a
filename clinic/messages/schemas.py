"""HTTP shapes of the HL7 v2 message store. Metadata only: no message content (it holds PHI)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict


class HL7MessageOut(BaseModel):
    """One stored message, as listed for an integration engineer."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    received_at: dt.datetime
    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str
    version: str
    charset: str
    peer: str
    status: str
    ack_code: str
    error: str
    notes: str
    attempts: int
    processed_at: dt.datetime | None
    size: int


class HL7MessageList(BaseModel):
    messages: list[HL7MessageOut]
    #: Pass as ``before_id`` for the next (older) page; None on the last page.
    next_before_id: int | None
    counts: dict[str, int]
