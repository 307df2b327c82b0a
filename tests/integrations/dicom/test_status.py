"""The status enums and the one table from errors to C-STORE statuses."""

from __future__ import annotations

import errno

import pytest
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, VERIFICATION_SERVICE_CLASS_STATUS
from sqlalchemy import exc as sa_exc

from integrations.dicom.errors import (
    DatasetEncodingError,
    InvalidUIDError,
    MissingAttributeError,
    SOPClassMismatchError,
    SOPInstanceMismatchError,
    UnsupportedSOPClassError,
)
from integrations.dicom.status import (
    EchoStatus,
    StatusCategory,
    StoreStatus,
    category,
    store_status_for,
)


@pytest.mark.parametrize("status", list(StoreStatus))
def test_store_statuses_are_the_storage_service_class_ones(status: StoreStatus) -> None:
    """Every value agrees with pynetdicom's table of PS3.4 B.2.3 / PS3.7 C statuses."""
    known_category, _description = STORAGE_SERVICE_CLASS_STATUS[status.value]
    assert known_category == status.category.value


@pytest.mark.parametrize("status", list(EchoStatus))
def test_echo_statuses_are_the_verification_ones(status: EchoStatus) -> None:
    known_category, _description = VERIFICATION_SERVICE_CLASS_STATUS[status.value]
    assert known_category == status.category.value


def test_categories() -> None:
    assert category(0x0000) is StatusCategory.SUCCESS
    assert category(0xB007) is StatusCategory.WARNING
    assert category(0xFF00) is StatusCategory.PENDING
    assert category(0xFE00) is StatusCategory.CANCEL
    assert category(0xA700) is StatusCategory.FAILURE
    assert category(0xC123) is StatusCategory.FAILURE
    assert StoreStatus.SUCCESS.is_success and not StoreStatus.OUT_OF_RESOURCES.is_success


def _operational() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT ...", {}, Exception("database is locked"))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnsupportedSOPClassError("x"), StoreStatus.SOP_CLASS_NOT_SUPPORTED),
        (SOPClassMismatchError("x"), StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (MissingAttributeError("StudyInstanceUID"), StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (InvalidUIDError("StudyInstanceUID", "x"), StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (SOPInstanceMismatchError("x"), StoreStatus.CANNOT_UNDERSTAND),
        (DatasetEncodingError("x"), StoreStatus.CANNOT_UNDERSTAND),
        (_operational(), StoreStatus.OUT_OF_RESOURCES),
        (sa_exc.TimeoutError("pool"), StoreStatus.OUT_OF_RESOURCES),
        (sa_exc.IntegrityError("INSERT", {}, Exception("dup")), StoreStatus.PROCESSING_FAILURE),
        (OSError(errno.ENOSPC, "No space left on device"), StoreStatus.OUT_OF_RESOURCES),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), StoreStatus.OUT_OF_RESOURCES),
        (OSError(errno.EIO, "Input/output error"), StoreStatus.PROCESSING_FAILURE),
        (MemoryError(), StoreStatus.OUT_OF_RESOURCES),
        (RuntimeError("bug"), StoreStatus.PROCESSING_FAILURE),
    ],
)
def test_one_table_maps_errors_to_statuses(error: BaseException, status: StoreStatus) -> None:
    assert store_status_for(error) is status
