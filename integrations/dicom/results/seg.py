"""The AI read's label map as a DICOM Segmentation (PS3.3 A.51), BINARY, one segment.

The segment (PS3.3 C.8.20.2 Segment Description) is coded: category (49755003, SCT,
"Morphologically Abnormal Structure") from CID 7150, type from :mod:`.codes` (e.g. (27925004, SCT,
"Nodule"), CID 7151), anatomic region (39607008, SCT, "Lung"), algorithm type AUTOMATIC with the
model's name, version and family (123110, DCM, "Artificial Intelligence") from CID 7162, and the
tracking UID its SR measurement group carries.

Frame *k* of the mask is the frame of source instance ``mask_sop_uids[k]``: highdicom takes each
frame's Plane Position (Patient), Plane Orientation and Pixel Measures from that source
(PS3.3 C.7.6.16.2) and names it in the frame's Derivation Image Sequence. Empty frames are kept by
default (``omit_empty_frames=False``): every source frame has its SEG frame, so viewers that walk
the series slice by slice place the segment without gaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from highdicom.seg import Segmentation, SegmentationTypeValues, SegmentDescription
from highdicom.seg.enum import SegmentAlgorithmTypeValues
from pydicom.dataset import Dataset

from clinic.ai.models import AIRead
from integrations.dicom.results import codes, equipment
from integrations.dicom.results.errors import ResultObjectError
from integrations.dicom.results.sources import check_sources, segmented_finding, tracking_uid

#: Segment labels (PS3.3 C.8.20.2, LO) of the findings we segment; others use the finding's label.
SEGMENT_LABELS = {"lung_nodule": "Lung nodule", "nodule_mass": "Nodule/mass"}


def _ordered_sources(
    sources: Sequence[Dataset], mask: np.ndarray, mask_sop_uids: Sequence[str]
) -> list[Dataset]:
    """The source of each mask frame, in frame order; checks shapes and the label values."""
    if mask.ndim != 3:
        raise ResultObjectError(f"mask must be a (frames, rows, columns) label map, got shape {mask.shape}")
    if mask.dtype not in (np.uint8, np.bool_):
        raise ResultObjectError(f"mask must be uint8 (0 background, 1 segment), got {mask.dtype}")
    if mask.size and int(mask.max()) > 1:
        raise ResultObjectError(
            f"a BINARY segmentation (PS3.3 C.8.20.2.3) has labels 0 and 1 only; mask has {int(mask.max())}"
        )
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    uids = list(mask_sop_uids) if mask_sop_uids else list(by_uid)
    if len(uids) != mask.shape[0]:
        raise ResultObjectError(f"mask has {mask.shape[0]} frames but {len(uids)} source instances name them")
    if len(set(uids)) != len(uids):
        raise ResultObjectError("mask_sop_uids must name each source instance once")
    unknown = [u for u in uids if u not in by_uid]
    if unknown:
        raise ResultObjectError(f"mask frame source {unknown[0]} is not among the source instances")
    ordered = [by_uid[u] for u in uids]
    for uid, source in zip(uids, ordered, strict=True):
        if (int(source.Rows), int(source.Columns)) != mask.shape[1:]:
            raise ResultObjectError(
                f"mask frames are {mask.shape[1]}x{mask.shape[2]} but source {uid} is "
                f"{source.Rows}x{source.Columns} (PS3.3 C.8.20.2: SEG frames match their source)"
            )
    return ordered


def _segment_label(read: AIRead, finding_code: str) -> str:
    if finding_code in SEGMENT_LABELS:
        return SEGMENT_LABELS[finding_code]
    labels = {f.code: f.label for f in read.findings}
    return equipment.fit(labels.get(finding_code) or finding_code)


def build_seg(
    read: AIRead,
    sources: Sequence[Dataset],
    mask: np.ndarray,
    mask_sop_uids: Sequence[str] = (),
    *,
    finding_code: str | None = None,
    manufacturer: str = equipment.DEFAULT_MANUFACTURER,
    series_number: int = 9902,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    omit_empty_frames: bool = False,
    workers: int = 0,
    revises: Sequence[str] = (),
) -> Segmentation:
    """A BINARY SEG of *mask* (frames, rows, columns; 1 = the finding) on *sources*.

    Frame *k* belongs to ``mask_sop_uids[k]`` (all *sources* in their order when empty). The
    segment is finding *finding_code* (default: :func:`segmented_finding`).
    *revises* (UIDs of the objects this one revises) gives a revision UIDs of its own.
    Raises :class:`ResultObjectError` naming the rule a bad input breaks.
    """
    check_sources(read, sources)
    ordered = _ordered_sources(sources, mask, mask_sop_uids)
    finding_code = finding_code or segmented_finding(read)
    label = _segment_label(read, finding_code)
    concept = codes.finding_concept(finding_code, label)
    segment = SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=concept.finding,
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=equipment.seg_algorithm(read, manufacturer),
        tracking_uid=tracking_uid(sources[0], read, finding_code),
        tracking_id=label,
        anatomic_regions=[concept.site] if concept.site else None,
    )
    notice = equipment.disclaimer(read)
    seg = Segmentation(
        source_images=ordered,
        pixel_array=mask,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_instance_uid or equipment.result_uid(read, "seg-series", revises),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or equipment.result_uid(read, "seg", revises),
        instance_number=instance_number,
        manufacturer=equipment.fit(manufacturer),
        manufacturer_model_name=equipment.fit(read.model_name),
        software_versions=equipment.fit(read.model_version),
        device_serial_number=equipment.fit(f"{read.model_id} {read.model_version}"),
        content_description=equipment.fit(notice or f"AI segmentation: {read.model_name}"),
        content_label="AI_SEGMENTATION",
        omit_empty_frames=omit_empty_frames,
        contributing_equipment=[equipment.contributing_equipment(read, manufacturer)],
        series_description=equipment.series_description(read, "AI SEG"),
        specific_character_set="ISO_IR 192",
        workers=workers,
    )
    seg.DeviceUID = equipment.device_uid(read.model_id, read.model_version)  # PS3.3 C.7.5.1
    if "FrameOfReferenceUID" not in ordered[0]:
        # General Image (PS3.3 C.7.6.1): Patient Orientation is Type 2C without a patient frame
        # of reference (a radiograph); highdicom leaves it out, the source's applies unchanged.
        seg.PatientOrientation = ordered[0].get("PatientOrientation", "")
    return seg
