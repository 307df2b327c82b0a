"""Synthetic chest radiographs as valid DICOM objects, for the demo, tests and benchmarks.

:func:`build_cxr_dataset` wraps a ``uint16`` pixel array in a Digital X-Ray Image Storage – For
Presentation (PS3.3 A.26) or Computed Radiography Image Storage (PS3.3 A.2) object: Patient,
General Study, the DX/CR Series, General Equipment, General Image, Image Pixel, DX Anatomy Imaged,
DX Image, DX Detector, DX Positioning, VOI LUT and SOP Common modules with their Type 1 and 2
attributes. Every image says it is synthetic in Image Comments and Series Description. The result
reads back with pydicom in strict mode (``reading_validation_mode = RAISE``).

:func:`build_ct_series` writes a Hounsfield-unit volume as a CT Image Storage series (PS3.3 A.3):
one single-frame axial image per slice with the Image Plane (C.7.6.2) and CT Image (C.8.2.1)
modules, a Frame of Reference shared by the series, and Rescale Intercept −1024 over unsigned
16-bit stored values.
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
    CTImageStorage,
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
    return _with_file_meta(ds, sop_class, sop_instance)


def _with_file_meta(ds: Dataset, sop_class: str, sop_instance: str) -> Dataset:
    """*ds* with its Part 10 file meta (Explicit VR Little Endian, our implementation UID)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
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


#: Stored value = HU − CT_RESCALE_INTERCEPT (unsigned 16 bits, so −1024 HU is 0).
CT_RESCALE_INTERCEPT = -1024


def build_ct_series(
    volume_hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    patient_id: str,
    patient_name: str,
    accession_number: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_sex: str = "",
    patient_birth_date: dt.date | None = None,
    study_datetime: dt.datetime | None = None,
    study_description: str = "CT CHEST",
    series_number: int = 2,
    body_part: str = "CHEST",
    origin: tuple[float, float, float] | None = None,
) -> list[Dataset]:
    """An axial CT series of *volume_hu* (z, y, x), slice 0 the most inferior; one dataset a slice.

    *spacing* is (slice step, row step, column step) in mm; the slices are contiguous (Slice
    Thickness = the step). Image Orientation (Patient) is ``1\\0\\0\\0\\1\\0`` (rows run to the
    patient's left, columns to posterior), Image Position (Patient) rises by the step along z
    from *origin* (default: the volume centred on the isocentre). Instance Number counts from the
    most superior slice down, as a head-first scan acquires them, so that a reader must order
    slices by position, not by number. HU are rounded and clipped to [−1024, 64511].
    """
    if volume_hu.ndim != 3 or min(volume_hu.shape) < 1:
        raise ValueError(f"volume_hu must be a (z, y, x) array, got shape {volume_hu.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) mm, got {spacing}")
    n, rows, columns = (int(v) for v in volume_hu.shape)
    dz, dy, dx = (float(v) for v in spacing)
    if origin is None:
        origin = (-(columns - 1) * dx / 2, -(rows - 1) * dy / 2, -(n - 1) * dz / 2)
    stored = np.clip(np.rint(np.asarray(volume_hu, dtype=np.float64)) - CT_RESCALE_INTERCEPT, 0, 65535)
    stored = stored.astype("<u2")
    when = study_datetime or dt.datetime.now()
    study = UID(study_uid or generate_uid())
    series = UID(series_uid or generate_uid())
    frame_of_reference = UID(frame_of_reference_uid or generate_uid())
    out = []
    for k in range(n):
        ds = _ct_slice(
            stored[k],
            patient_id=patient_id,
            patient_name=patient_name,
            accession_number=accession_number,
            patient_sex=patient_sex,
            patient_birth_date=patient_birth_date,
            when=when,
            study_description=study_description,
            body_part=body_part,
        )
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SeriesNumber = series_number
        ds.InstanceNumber = n - k
        position = (origin[0], origin[1], origin[2] + k * dz)
        ds.ImagePositionPatient = [_spacing_text(v) for v in position]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = _spacing_text(position[2])
        ds.SliceThickness = _spacing_text(dz)
        ds.PixelSpacing = [_spacing_text(dy), _spacing_text(dx)]
        out.append(ds)
    return out


def _ct_slice(
    pixels: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    accession_number: str,
    patient_sex: str,
    patient_birth_date: dt.date | None,
    when: dt.datetime,
    study_description: str,
    body_part: str,
) -> Dataset:
    """One CT image's attributes but its geometry and series-level UIDs."""
    sop_instance = generate_uid()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession_number
    ds.Modality = "CT"
    ds.Manufacturer = "Smart Clinic (synthetic)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"AXIAL ({SYNTHETIC_NOTE})"[:64]
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = patient_birth_date.strftime("%Y%m%d") if patient_birth_date else ""
    ds.PatientSex = patient_sex
    ds.BodyPartExamined = body_part
    ds.PatientPosition = "HFS"
    ds.StudyID = ""
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.ImageComments = SYNTHETIC_NOTE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(CT_RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"  # lung window
    ds.WindowWidth = "1500"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return _with_file_meta(ds, CTImageStorage, sop_instance)
