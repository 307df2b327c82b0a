"""Checks of the source instances a result object describes, and what is derived from them."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from clinic.ai.models import AIRead
from integrations.dicom.results import codes
from integrations.dicom.results.equipment import derived_uid
from integrations.dicom.results.errors import ResultObjectError

#: Attributes every result copies from its first source: Patient (PS3.3 C.7.1.1) and General
#: Study (C.7.2.1) Type 2 attributes, and the identity of the instance.
_COPIED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
)


def check_sources(read: AIRead, sources: Sequence[Dataset]) -> None:
    """*sources* are the instances *read* was made on: one study, the read's series, and the
    instance the read names among them. Raises :class:`ResultObjectError` otherwise."""
    if not sources:
        raise ResultObjectError("a result object needs the source instances it describes (none given)")
    first = sources[0]
    missing = [k for k in _COPIED if k not in first]
    if missing:
        raise ResultObjectError(
            f"source {first.get('SOPInstanceUID', '?')} lacks {', '.join(missing)} "
            "(PS3.3 C.7.1.1, C.7.2.1, C.12.1), which the result copies"
        )
    studies = {str(s.get("StudyInstanceUID", "")) for s in sources}
    if len(studies) != 1:
        raise ResultObjectError("all source instances must belong to one study (PS3.3 C.17.2.3)")
    if read.series_uid and any(str(s.get("SeriesInstanceUID", "")) != read.series_uid for s in sources):
        raise ResultObjectError(f"source instances must belong to the read's series {read.series_uid}")
    uids = [str(s.get("SOPInstanceUID", "")) for s in sources]
    if len(set(uids)) != len(uids):
        raise ResultObjectError("source instances must be distinct (a SOP Instance UID repeats)")
    if read.sop_instance_uid not in uids:
        raise ResultObjectError(f"the read's instance {read.sop_instance_uid} is not among the sources")


def tracking_uid(source: Dataset, read: AIRead, code: str) -> str:
    """Tracking Unique Identifier (TID 4108) of finding *code* of one model on one series.

    The same across the versions of a model, so that a revised result tracks the same finding
    as the one it revises; SR group and SEG segment share it.
    """
    series = read.series_uid or str(source.SeriesInstanceUID)
    return derived_uid("tracking", str(source.StudyInstanceUID), series, read.model_id, code)


#: What highdicom's TID 1600 Image Library Entry Descriptors read from an image, by modality:
#: TID 1603 (projection radiography) and TID 1604 (cross-sectional), with their value counts.
_PROJECTION = {"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"}
_CROSS_SECTIONAL = {"CT", "MR", "PT"}
_PROJECTION_NEEDS = {"PatientOrientation": 2, "ImagerPixelSpacing": 2}
_CROSS_SECTIONAL_NEEDS = {
    "PixelSpacing": 2,
    "ImageOrientationPatient": 6,
    "ImagePositionPatient": 3,
    "SliceThickness": 1,
}


def library_describable(source: Dataset) -> bool:
    """Whether *source* has what its Image Library entry describes (TID 1603 / 1604). Real
    radiographs often lack the Type 3 Imager Pixel Spacing or Patient Orientation."""
    modality = str(source.get("Modality", ""))
    needs = (
        _PROJECTION_NEEDS
        if modality in _PROJECTION
        else _CROSS_SECTIONAL_NEEDS
        if modality in _CROSS_SECTIONAL
        else {}
    )
    for keyword, count in needs.items():
        element = source.get(keyword)
        if element is None or element == "" or (count > 1 and len(element) != count):
            return False
    return True


def segmented_finding(read: AIRead) -> str:
    """The finding a read's label map segments, when the caller does not say: the CT nodule
    model's ``lung_nodule`` if the read has it, else the read's only finding, else
    ``lung_nodule`` (its group is then added to the SR)."""
    finding_codes = [f.code for f in read.findings]
    if codes.DEFAULT_SEGMENT_FINDING in finding_codes or len(finding_codes) != 1:
        return codes.DEFAULT_SEGMENT_FINDING
    return finding_codes[0]
