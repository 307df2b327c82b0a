"""Why a received HL7 v2 message was refused or could not be processed.

Each error carries the HL7 table 0357 condition code it answers with (ERR-3) and, where it applies,
the location of the offending field (ERR-2, e.g. ``PID-3``). :mod:`integrations.hl7v2.ack` is the one
table that turns them into MSA-1 codes. Messages carry structure only (segment, field, message type),
never field values that could hold PHI.
"""

from __future__ import annotations

from integrations.hl7v2.tables import ErrorCode


class HL7Error(Exception):
    """Base class of every HL7 v2 error raised by this package."""

    code: ErrorCode = ErrorCode.APPLICATION_INTERNAL_ERROR

    def __init__(self, reason: str, *, location: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        #: ERR-2 error location, "SEG-n" (e.g. "MSH-10"), or "" when none applies.
        self.location = location


class FramingError(HL7Error):
    """The bytes on the connection are not an MLLP block (0x0B ... 0x1C 0x0D); the connection
    cannot be resynchronised safely, so it is closed."""


class MessageTooLargeError(HL7Error):
    """The framed message exceeds ``hl7_max_message_bytes``."""

    code = ErrorCode.APPLICATION_INTERNAL_ERROR


class MessageParseError(HL7Error):
    """Not an HL7 v2 message: no MSH segment, broken encoding characters (MSH-1/MSH-2), or a text
    that cannot be decoded in its declared character set (MSH-18)."""

    code = ErrorCode.DATA_TYPE_ERROR


class RequiredFieldMissingError(HL7Error):
    """A field the message structure requires is empty (table 0357 code 101)."""

    code = ErrorCode.REQUIRED_FIELD_MISSING

    def __init__(self, location: str, reason: str = "") -> None:
        super().__init__(reason or f"required field {location} missing", location=location)


class UnsupportedMessageTypeError(HL7Error):
    """MSH-9.1 names a message type this receiver does not handle (table 0357 code 200)."""

    code = ErrorCode.UNSUPPORTED_MESSAGE_TYPE


class UnsupportedEventError(HL7Error):
    """MSH-9.2 names a trigger event this receiver does not handle for that message type
    (table 0357 code 201)."""

    code = ErrorCode.UNSUPPORTED_EVENT_CODE


class UnsupportedProcessingIdError(HL7Error):
    """MSH-11 is not P, D or T (table 0103; table 0357 code 202)."""

    code = ErrorCode.UNSUPPORTED_PROCESSING_ID


class UnsupportedVersionError(HL7Error):
    """MSH-12 names a version this receiver does not accept (table 0357 code 203)."""

    code = ErrorCode.UNSUPPORTED_VERSION_ID


class MappingError(HL7Error):
    """A permanent content fault found while translating a stored message into domain commands
    (raised by :func:`integrations.hl7v2.mapping.process_message`). The message is marked FAILED
    with this reason and is not retried automatically; an engineer can replay it.

    ``code`` defaults to 207 (application internal error); pass a more precise table 0357 code
    (e.g. ``ErrorCode.REQUIRED_FIELD_MISSING`` with ``location="PID-3"``) when one applies.
    """

    def __init__(self, reason: str, *, code: ErrorCode | None = None, location: str = "") -> None:
        super().__init__(reason, location=location)
        if code is not None:
            self.code = code


class StoreUnavailableError(HL7Error):
    """The message could not be stored (database unavailable, disk full): it is refused without
    being kept, so the sender keeps it and sends it again later (v2.5.1 §2.9.2.2: AR for a reason
    unrelated to the content)."""

    code = ErrorCode.APPLICATION_INTERNAL_ERROR


class AcknowledgementReceivedError(HL7Error):
    """An ACK arrived on the inbound port. It is kept for inspection and never answered
    (an acknowledgement is not acknowledged)."""

    code = ErrorCode.UNSUPPORTED_MESSAGE_TYPE
