"""Synthetic chest radiographs as valid DICOM objects, for the demo, tests and benchmarks.

:func:`build_cxr_dataset` wraps a ``uint16`` pixel array in a Digital X-Ray Image Storage – For
Presentation (PS3.3 A.26) or Computed Radiography Image Storage (PS3.3 A.2) object: Patient,
General Study, the DX/CR Series, General Equipment, General Image, Image Pixel, DX Anatomy Imaged,
DX Image, DX Detector, DX Positioning, VOI LUT and SOP Common modules with their Type 1 and 2
attributes. Every image says it is synthetic in Image Comments and Series Description. The result
reads back with pydicom in strict mode (``reading_validation_mode = RAISE``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from integrations.dicom.storage import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

SYNTHETIC_NOTE = "synthetic image - not for clinical use"
#: The field of view of a common 43 cm × 43 cm detector, used when no spacing is given.
DEFAULT_FIELD_OF_VIEW_MM = 350.0
_VIEWS = {"PA", "AP", "LL", "RL", "LATERAL"}
#: Patient Orientation (PS3.3 C.7.6.1.1.1) of a chest view displayed the usual way: the
#: patient's right on the viewer's left, head up.
_ORIENTATION = {"PA": ["L", "F"], "AP": ["L", "F"], "LL": ["P", "F"], "RL": ["A", "F"], "LATERAL": ["P", "F"]}


def _spacing_text(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text[:16]


def _window(pixels: np.ndarray) -> tuple[float, float]:
    """A VOI window from the 1st to the 99th percentile of the pixel values."""
    low, high = np.percentile(pixels, [1.0, 99.0])
    width = max(float(high - low), 1.0)
    return round(float(low) + width / 2, 1), round(width, 1)


def build_cxr_dataset(
    pixels: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    accession_number: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    view_position: str = "PA",
    modality: Literal["DX", "CR"] = "DX",
    pixel_spacing: tuple[float, float] | None = None,
    patient_sex: str = "",
    patient_birth_date: dt.date | None = None,
    study_datetime: dt.datetime | None = None,
    study_description: str = "XR CHEST",
    series_number: int = 1,
    instance_number: int = 1,
    bits_stored: int | None = None,
) -> Dataset:
    """A chest radiograph (MONOCHROME2, BodyPartExamined CHEST) holding *pixels*.

    *pixels* is a 2-D ``uint16`` array of raw detector values (higher is brighter). UIDs are
    generated (``pydicom.uid.generate_uid``) unless given. *bits_stored* defaults to the fewest
    bits that hold the largest value (at least 8).
    """
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D array, got shape {pixels.shape}")
    if pixels.dtype != np.uint16:
        raise ValueError(f"pixels must be uint16, got {pixels.dtype}")
    view = view_position.upper()
    if view not in _VIEWS:
        raise ValueError(f"view_position must be one of {sorted(_VIEWS)}, got {view_position!r}")
    if modality not in ("DX", "CR"):
        raise ValueError(f"modality must be DX or CR, got {modality!r}")
    rows, columns = (int(n) for n in pixels.shape)
    maximum = int(pixels.max()) if pixels.size else 0
    stored = bits_stored or max(8, maximum.bit_length())
    if not 1 <= stored <= 16 or maximum >= 1 << stored:
        raise ValueError(f"bits_stored={stored} cannot hold the largest pixel value {maximum}")
    if pixel_spacing is None:
        pixel_spacing = (DEFAULT_FIELD_OF_VIEW_MM / rows, DEFAULT_FIELD_OF_VIEW_MM / columns)
    when = study_datetime or dt.datetime.now()
    sop_class = (
        DigitalXRayImageStorageForPresentation if modality == "DX" else ComputedRadiographyImageStorage
    )
    sop_instance = UID(sop_instance_uid or generate_uid())
    center, width = _window(pixels)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names in Hangul and other scripts
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = when.strftime("%H%M%S")
    ds.SeriesTime = ds.StudyTime
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = accession_number
    ds.Modality = modality
    ds.Manufacturer = "Smart Clinic (synthetic)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"CHEST {view} ({SYNTHETIC_NOTE})"[:64]
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = patient_birth_date.strftime("%Y%m%d") if patient_birth_date else ""
    ds.PatientSex = patient_sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = UID(study_uid or generate_uid())
    ds.SeriesInstanceUID = UID(series_uid or generate_uid())
    ds.StudyID = ""
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = _ORIENTATION[view]
    ds.ImageLaterality = "U"  # unpaired body part (PS3.3 C.8.11.2)
    ds.ImageComments = SYNTHETIC_NOTE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [_spacing_text(pixel_spacing[0]), _spacing_text(pixel_spacing[1])]
    ds.ImagerPixelSpacing = list(ds.PixelSpacing)
    ds.BitsAllocated = 16
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{center:g}"
    ds.WindowWidth = f"{width:g}"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.DetectorType = "DIRECT"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.set_original_encoding(False, True)
    return ds


def write_dataset(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write *ds* as a DICOM Part 10 file at *path*, atomically (temporary file, then rename)."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        ds.save_as(temp, enforce_file_format=True)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target
