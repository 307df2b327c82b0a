"""HL7 v2 code tables used by acknowledgements, as named values (never raw strings in handlers).

Sources: HL7 v2.5.1 chapter 2 (Control), tables 0008, 0155, 0357 and 0516.
"""

from __future__ import annotations

from enum import StrEnum


class AckCode(StrEnum):
    """HL7 table 0008 Acknowledgment code (MSA-1)."""

    #: Original mode: application accept / error / reject.
    AA = "AA"
    AE = "AE"
    AR = "AR"
    #: Enhanced mode: commit accept / error / reject.
    CA = "CA"
    CE = "CE"
    CR = "CR"

    @property
    def is_positive(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)

    @property
    def is_commit(self) -> bool:
        """True for the enhanced-mode accept acknowledgements (v2.5.1 §2.9.3)."""
        return self in (AckCode.CA, AckCode.CE, AckCode.CR)


class AckCondition(StrEnum):
    """HL7 table 0155 Accept/application acknowledgment conditions (MSH-15, MSH-16)."""

    ALWAYS = "AL"
    NEVER = "NE"
    ERROR = "ER"  # error/reject conditions only
    SUCCESS = "SU"  # successful completion only

    @classmethod
    def from_field(cls, value: str) -> AckCondition | None:
        """``None`` for an empty field; an unknown value is treated as empty (v2.5.1 §2.9.3:
        both fields empty means original mode)."""
        try:
            return cls(value.strip().upper()) if value.strip() else None
        except ValueError:
            return None


class ErrorCode(StrEnum):
    """HL7 table 0357 Message error condition codes (ERR-3)."""

    ACCEPTED = "0"
    SEGMENT_SEQUENCE_ERROR = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE_ERROR = "102"
    TABLE_VALUE_NOT_FOUND = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT_CODE = "201"
    UNSUPPORTED_PROCESSING_ID = "202"
    UNSUPPORTED_VERSION_ID = "203"
    UNKNOWN_KEY_IDENTIFIER = "204"
    DUPLICATE_KEY_IDENTIFIER = "205"
    APPLICATION_RECORD_LOCKED = "206"
    APPLICATION_INTERNAL_ERROR = "207"

    @property
    def text(self) -> str:
        """The table's display text (ERR-3.2)."""
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ErrorCode.ACCEPTED: "Message accepted",
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class Severity(StrEnum):
    """HL7 table 0516 Error severity (ERR-4)."""

    ERROR = "E"
    WARNING = "W"
    INFORMATION = "I"
