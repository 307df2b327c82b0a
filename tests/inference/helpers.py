"""Helpers of the inference tests: phantoms as real DICOM files, hand-written bundle configs."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from inference.demo.phantoms import BITS_STORED, Phantom

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")


def phantom_dataset(
    phantom: Phantom,
    *,
    monochrome1: bool = False,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    modality: str = "CR",
    body_part: str = "CHEST",
    view_position: str = "PA",
) -> Dataset:
    """A CR Image Storage dataset (PS3.3 A.2) holding the phantom's raw 12-bit values."""
    raw = phantom.image.astype(np.uint16)
    if monochrome1:  # same display, stored inverted (PS3.3 C.7.6.3.1.2)
        raw = (2**BITS_STORED - 1 - raw).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PHANTOM"
    ds.PatientName = "Phantom^Synthetic"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.ImagerPixelSpacing = [f"{v:.4f}" for v in phantom.pixel_spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = raw.shape
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{rescale[0]:g}", f"{rescale[1]:g}")
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{window[0]:.1f}", f"{window[1]:.1f}")
    ds.PixelData = raw.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    return ds


#: DICOM encodings the demo-model test cycles through: plain, stored inverted, windowed, compressed.
DICOM_VARIANTS: tuple[dict[str, Any], ...] = (
    {},
    {"monochrome1": True},
    {"window": None, "rescale": (1.0, -1024.0), "transfer_syntax": RLELossless},
    {"monochrome1": True, "transfer_syntax": JPEG2000Lossless},
)


# --- hand-written bundles for the parser -------------------------------------------------------

VALID_INFERENCE: dict[str, Any] = {
    "network_def": {
        "_target_": "monai.networks.nets.DenseNet121",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
    },
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64], "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image"},
        ],
    },
    "postprocessing": {"_target_": "Activations", "sigmoid": True},
    "explain": {"_target_": "monai.visualize.GradCAM", "target_layers": "features.denseblock2"},
}


def valid_metadata(model_id: str = "test-model") -> dict[str, Any]:
    return {
        "name": "Test model",
        "version": "9.9.9",
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "network_data_format": {"inputs": {}, "outputs": {}},
        "clinic": {
            "model_id": model_id,
            "is_synthetic": True,
            "disclaimer": "synthetic demo model — not for clinical use",
            "routing": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"], "view_positions": ["PA", "AP"]},
            "findings": [
                {"code": "a", "label": "A", "output_index": 0, "threshold": 0.5, "urgency": 1},
                {"code": "b", "label": "B", "output_index": 1, "threshold": 0.4, "urgency": 0},
            ],
        },
    }
