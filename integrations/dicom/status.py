"""DIMSE status values of the services we provide, and the one table that maps errors to them.

Statuses are named values (pynetdicom's ``Status`` style), returned by handlers; no handler writes a
raw code. Sources: PS3.7 Annex C (general statuses), PS3.4 Annex A (Verification) and Annex B
(Storage, B.2.3 "Status").
"""

from __future__ import annotations

import errno
from enum import IntEnum, StrEnum

from sqlalchemy import exc as sa_exc

from integrations.dicom.errors import (
    DatasetEncodingError,
    DicomReceiveError,
    InvalidUIDError,
    MissingAttributeError,
    SOPClassMismatchError,
    SOPInstanceMismatchError,
    UnsupportedSOPClassError,
)


class StatusCategory(StrEnum):
    """The status categories of PS3.7 C.1.2."""

    SUCCESS = "Success"
    WARNING = "Warning"
    FAILURE = "Failure"
    CANCEL = "Cancel"
    PENDING = "Pending"


def category(code: int) -> StatusCategory:
    """The category of any DIMSE status code (PS3.7 C.1.2 and the service annexes of PS3.4)."""
    if code == 0x0000:
        return StatusCategory.SUCCESS
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return StatusCategory.WARNING
    if code == 0xFE00:
        return StatusCategory.CANCEL
    if code in (0xFF00, 0xFF01):
        return StatusCategory.PENDING
    return StatusCategory.FAILURE


class EchoStatus(IntEnum):
    """C-ECHO response statuses (PS3.4 A.4.2, PS3.7 C.4)."""

    SUCCESS = 0x0000
    #: Refused: SOP Class Not Supported
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Duplicate Invocation
    DUPLICATE_INVOCATION = 0x0210
    #: Unrecognized Operation
    UNRECOGNIZED_OPERATION = 0x0211
    #: Mistyped Argument
    MISTYPED_ARGUMENT = 0x0212

    @property
    def category(self) -> StatusCategory:
        return category(self.value)


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 B.2.3, PS3.7 C.4)."""

    SUCCESS = 0x0000
    #: Warning: Coercion of Data Elements
    COERCION_OF_DATA_ELEMENTS = 0xB000
    #: Warning: Elements Discarded
    ELEMENTS_DISCARDED = 0xB006
    #: Warning: Data Set does not match SOP Class
    DATASET_MISMATCH_WARNING = 0xB007
    #: Refused: Out of Resources (the SCU may retry later)
    OUT_OF_RESOURCES = 0xA700
    #: Error: Data Set does not match SOP Class
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Error: Cannot understand
    CANNOT_UNDERSTAND = 0xC000
    #: Failure: Processing failure (PS3.7 C.4.1)
    PROCESSING_FAILURE = 0x0110
    #: Failure: Duplicate SOP Instance
    DUPLICATE_SOP_INSTANCE = 0x0111
    #: Failure: Invalid Object Instance
    INVALID_OBJECT_INSTANCE = 0x0117
    #: Refused: SOP Class Not Supported
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Refused: Not Authorized
    NOT_AUTHORIZED = 0x0124

    @property
    def category(self) -> StatusCategory:
        return category(self.value)

    @property
    def is_success(self) -> bool:
        return self is StoreStatus.SUCCESS


#: Errno values that mean "no room now" rather than "broken": the SCU should retry later.
_RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM})

#: The one table from errors to C-STORE statuses; the first matching row wins.
STORE_STATUS_FOR_ERROR: tuple[tuple[type[BaseException], StoreStatus], ...] = (
    (UnsupportedSOPClassError, StoreStatus.SOP_CLASS_NOT_SUPPORTED),
    (SOPClassMismatchError, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (MissingAttributeError, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (InvalidUIDError, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (SOPInstanceMismatchError, StoreStatus.CANNOT_UNDERSTAND),
    (DatasetEncodingError, StoreStatus.CANNOT_UNDERSTAND),
    (DicomReceiveError, StoreStatus.CANNOT_UNDERSTAND),
    # The database cannot be reached, is locked past its timeout or its pool is exhausted:
    # transient, so "out of resources" tells the sender to try again later.
    (sa_exc.OperationalError, StoreStatus.OUT_OF_RESOURCES),
    (sa_exc.TimeoutError, StoreStatus.OUT_OF_RESOURCES),
    (sa_exc.SQLAlchemyError, StoreStatus.PROCESSING_FAILURE),
    (MemoryError, StoreStatus.OUT_OF_RESOURCES),
    (OSError, StoreStatus.PROCESSING_FAILURE),
)


def store_status_for(error: BaseException) -> StoreStatus:
    """The C-STORE status to answer for *error* (see :data:`STORE_STATUS_FOR_ERROR`)."""
    if isinstance(error, OSError) and error.errno in _RESOURCE_ERRNOS:
        return StoreStatus.OUT_OF_RESOURCES
    for error_type, status in STORE_STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return status
    return StoreStatus.PROCESSING_FAILURE
