"""Why a received DICOM object was refused.

Each error names the rule it enforces; :mod:`integrations.dicom.status` maps every one of them to the
DIMSE status answered to the peer (one table, no raw codes in handlers). Messages carry identifiers
and structure only, never attribute values that could hold PHI (patient names, IDs, dates).
"""

from __future__ import annotations


class DicomReceiveError(Exception):
    """Base class: a received object cannot be stored."""


class DatasetEncodingError(DicomReceiveError):
    """The encoded data set cannot be parsed under its transfer syntax (PS3.5 §7): not DICOM,
    truncated, or an element length that runs past the end of the stream."""


class MissingAttributeError(DicomReceiveError):
    """A Type 1 attribute that every composite IOD has (PS3.3 C.12.1, C.7.2.1, C.7.3.1) is absent
    or empty."""

    def __init__(self, keyword: str) -> None:
        super().__init__(f"missing Type 1 attribute {keyword}")
        self.keyword = keyword


class InvalidUIDError(DicomReceiveError):
    """A UID breaks PS3.5 §9.1 (digits and dots, at most 64 characters), so it is no safe path
    part either."""

    def __init__(self, keyword: str, reason: str) -> None:
        super().__init__(f"invalid {keyword}: {reason}")
        self.keyword = keyword


class SOPClassMismatchError(DicomReceiveError):
    """The data set's SOP Class UID (0008,0016) differs from the request's Affected SOP Class UID
    (PS3.4 B.2.3: "Data Set does not match SOP Class")."""


class SOPInstanceMismatchError(DicomReceiveError):
    """The data set's SOP Instance UID (0008,0018) differs from the request's Affected SOP
    Instance UID (PS3.7 §9.1.1.1)."""


class UnsupportedSOPClassError(DicomReceiveError):
    """A C-STORE arrived for a SOP class this SCP does not store (PS3.4 B.2.3, 0122)."""
