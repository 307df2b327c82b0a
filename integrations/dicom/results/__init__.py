"""AI result objects for viewers and PACS, built with highdicom: a TID 1500 Comprehensive 3D SR for
every read and a BINARY SEG when the read has a segmentation (DESIGN.md §9 "Results everywhere").

:func:`build_result_objects` is the entry point; :func:`build_sr` and :func:`build_seg` build one
object each; :func:`device_uid` is the Device UID of a model version. Objects are returned
unencoded (highdicom's ``pydicom.Dataset`` subclasses); :func:`encode` gives their Part 10 bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset

from clinic.ai.models import AIRead
from integrations.dicom.results.equipment import DEFAULT_MANUFACTURER, device_uid
from integrations.dicom.results.errors import ResultObjectError
from integrations.dicom.results.seg import build_seg
from integrations.dicom.results.sr import build_sr

__all__ = [
    "DEFAULT_MANUFACTURER",
    "ResultObjectError",
    "build_result_objects",
    "build_seg",
    "build_sr",
    "device_uid",
    "encode",
]


def build_result_objects(
    read: AIRead,
    sources: Sequence[Dataset],
    *,
    mask: np.ndarray | None = None,
    mask_sop_uids: Sequence[str] = (),
    predecessors: Sequence[Dataset] = (),
    manufacturer: str = DEFAULT_MANUFACTURER,
    series_number: int = 9901,
    instance_number: int = 1,
    segment_finding: str | None = None,
) -> list[Dataset]:
    """The result objects of *read*: the SR first, then the SEG when *mask* has any voxel set.

    *sources* are the instances the model read (one radiograph, or the whole CT series; their
    headers suffice, highdicom takes the geometry from them). *mask* is a
    ``uint8`` label map (frames, rows, columns; 0 background, 1 the segmented finding) whose
    frame *k* belongs to ``mask_sop_uids[k]``. *predecessors* are the earlier objects this
    revises: SR documents go into the new SR's Predecessor Documents Sequence (PS3.3 C.17.2);
    the SEG, which has no such attribute, gets new UIDs. The SR goes into series *series_number*,
    the SEG into *series_number* + 1. *segment_finding* is the finding code the mask segments
    (default: ``lung_nodule`` if the read has it, else its only finding).
    """
    previous_srs = [p for p in predecessors if p.get("Modality") == "SR"]
    seg = None
    if mask is not None and mask.any():
        seg = build_seg(
            read,
            sources,
            mask,
            mask_sop_uids,
            manufacturer=manufacturer,
            series_number=series_number + 1,
            instance_number=instance_number,
            finding_code=segment_finding,
            revises=[str(p.SOPInstanceUID) for p in predecessors],
        )
    sr = build_sr(
        read,
        sources,
        segmentation=seg,
        segment_finding=segment_finding,
        predecessors=previous_srs,
        manufacturer=manufacturer,
        series_number=series_number,
        instance_number=instance_number,
    )
    return [sr] if seg is None else [sr, seg]


def encode(ds: Dataset) -> bytes:
    """*ds* as a DICOM Part 10 file (preamble, File Meta Information, data set)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
