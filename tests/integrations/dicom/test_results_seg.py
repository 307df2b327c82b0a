"""The DICOM SEG of an AI read's label map, and the SR that references its segment: a 3D CT read on
a small series (frames given out of order), a radiograph read, empty and bad masks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from highdicom.seg import Segmentation
from highdicom.sr import Comprehensive3DSR, MeasurementReport
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from clinic.ai.models import SYNTHETIC_DISCLAIMER, AIRead
from integrations.dicom.results import ResultObjectError, build_result_objects, build_seg, device_uid, encode
from tests.integrations.dicom.results_helpers import (
    CREATED,
    Number,
    code_of,
    ct_series,
    dciodvfy_errors,
    dsrdump,
    make_read,
    synthetic_cr,
    write_strict,
)

NODULE = [("lung_nodule", "Lung nodule", 0.87, 0.5)]
NUMBERS = [
    ("lung_nodule", "nodule_count", "Nodule count", 1.0, "{count}"),
    ("lung_nodule", "largest_diameter", "Largest diameter", 12.5, "mm"),
    ("lung_nodule", "total_volume", "Total volume", 1022.7, "mm3"),
]
#: Slices (by position along z) that hold the nodule.
NODULE_SLICES = (4, 5, 6)


def _ct_read(
    source: Dataset,
    numbers: Sequence[Number] = (),
    *,
    version: str = "0.1.0",
    created_at: dt.datetime = CREATED,
) -> AIRead:
    """A read of the CT nodule model (one finding, lung_nodule) with *numbers*."""
    return make_read(
        source,
        NODULE,
        numbers,
        model_id="ct-nodule",
        model_name="CT nodule UNet demo",
        model_version=version,
        created_at=created_at,
    )


def _report(ds: Dataset) -> MeasurementReport:
    content = Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(content, MeasurementReport)
    return content


def _valid(path: Path) -> None:
    errors, output = dciodvfy_errors(path)
    assert errors == [], output


def _ct_case() -> tuple[list[Dataset], list[Dataset], np.ndarray, list[str]]:
    """A 10-slice series handed over shuffled, and a mask whose frames follow a third order."""
    series = ct_series(10)
    rng = np.random.default_rng(1)
    sources = [series[i] for i in rng.permutation(10)]
    frame_order = [series[i] for i in rng.permutation(10)]
    mask = np.zeros((10, 128, 128), np.uint8)
    for k, ds in enumerate(frame_order):
        if series.index(ds) in NODULE_SLICES:
            mask[k, 60:70, 50 + k : 62 + k] = 1  # a different footprint per frame
    return series, sources, mask, [str(ds.SOPInstanceUID) for ds in frame_order]


def test_ct_read_with_a_mask_gives_sr_and_seg(tmp_path: Path) -> None:
    series, sources, mask, uids = _ct_case()
    read = _ct_read(sources[0], NUMBERS)
    objects = build_result_objects(read, sources, mask=mask, mask_sop_uids=uids)
    assert [o.Modality for o in objects] == ["SR", "SEG"]
    sr_path, sr = write_strict(objects[0], tmp_path, "sr.dcm")
    seg_path, seg = write_strict(objects[1], tmp_path, "seg.dcm")

    # SEG: same study and frame of reference, one coded segment, every source frame kept.
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    assert (seg.SeriesNumber, int(seg.NumberOfFrames)) == (9902, 10)
    assert seg.ContentDescription == SYNTHETIC_DISCLAIMER
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Lung nodule" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert code_of(segment.SegmentedPropertyCategoryCodeSequence[0]) == ("49755003", "SCT")
    assert code_of(segment.SegmentedPropertyTypeCodeSequence[0]) == ("27925004", "SCT")
    assert code_of(segment.AnatomicRegionSequence[0]) == ("39607008", "SCT")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("CT nodule UNet demo", "0.1.0")
    assert code_of(algorithm.AlgorithmFamilyCodeSequence[0]) == ("123110", "DCM")
    assert [e.DeviceUID for e in seg.ContributingEquipmentSequence if "DeviceUID" in e] == [
        device_uid("ct-nodule", "0.1.0")
    ]

    # Geometry: each SEG frame sits on the plane of the source its mask frame belongs to.
    positions = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in series}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        placed = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert placed == pytest.approx(positions[source_uid])
    hd_seg = Segmentation.from_dataset(seg)
    pixels = hd_seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0], mask)

    # SR: a TID 1411 group referencing the segment, with the nodule's measurements.
    report = _report(sr)
    assert report.get_image_measurement_groups() == []
    (group,) = report.get_volumetric_roi_measurement_groups()
    assert group.finding_type == codes.SCT.Nodule
    assert group.tracking_uid == segment.TrackingUID
    reference = group.referenced_segment
    assert reference is not None
    segment_ref = reference[0].ReferencedSOPSequence[0]  # IMAGE (121191, DCM, "Referenced Segment")
    assert (segment_ref.ReferencedSOPInstanceUID, segment_ref.ReferencedSegmentNumber) == (
        seg.SOPInstanceUID,
        1,
    )
    assert reference[1].UID == series[0].SeriesInstanceUID  # Source Series for Segmentation
    (count,) = group.get_measurements(name=codes.SCT.NumberOfLesions)
    assert (count.value, count.unit.value) == (1.0, "{count}")
    (diameter,) = group.get_measurements(name=codes.SCT.Diameter)
    assert (diameter.value, diameter.unit, diameter.derivation) == (
        12.5,
        codes.UCUM.Millimeter,
        codes.SCT.Maximum,
    )
    (volume,) = group.get_measurements(name=codes.SCT.Volume)
    assert volume.value == pytest.approx(1022.7) and volume.unit == codes.UCUM.CubicMillimeter
    assert group.get_qualitative_evaluations()[0].value == codes.SCT.Present
    evidence = {
        ref.ReferencedSOPInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for s in item.ReferencedSeriesSequence
        for ref in s.ReferencedSOPSequence
    }
    assert evidence == {*positions, seg.SOPInstanceUID}

    _valid(sr_path)
    _valid(seg_path)
    tree = dsrdump(sr_path)
    for expected in ("Referenced Segment", '"Nodule"', "CT nodule UNet demo", '"Volume"', "mm3"):
        assert expected in tree, expected


def test_empty_or_absent_mask_gives_the_sr_alone() -> None:
    series = ct_series(3)
    read = _ct_read(series[0], NUMBERS[:1])
    for mask in (None, np.zeros((3, 128, 128), np.uint8)):
        (sr,) = build_result_objects(read, series, mask=mask)
        report = _report(sr)
        assert report.get_volumetric_roi_measurement_groups() == []
        assert len(report.get_image_measurement_groups()) == 1


def test_radiograph_mask_is_referenced_as_a_planar_roi(tmp_path: Path) -> None:
    source = synthetic_cr(seed=11)
    read = make_read(source, [("nodule_mass", "Nodule/mass", 0.83, 0.4)])
    mask = np.zeros((1, 256, 256), np.uint8)
    mask[0, 100:120, 50:70] = 1
    sr_obj, seg_obj = build_result_objects(read, [source], mask=mask)
    sr_path, sr = write_strict(sr_obj, tmp_path, "sr.dcm")
    seg_path, seg = write_strict(seg_obj, tmp_path, "seg.dcm")
    assert int(seg.NumberOfFrames) == 1 and "FrameOfReferenceUID" not in seg
    assert list(seg.PatientOrientation) == list(source.PatientOrientation)
    assert seg.SegmentSequence[0].SegmentLabel == "Nodule/mass"
    assert code_of(seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]) == ("52988006", "SCT")
    # pydicom unpacks the 1-bit frame (highdicom 0.28 cannot read back its own SEG of a
    # radiograph: it wants a Slice Thickness that a projection image has not).
    np.testing.assert_array_equal(seg.pixel_array, mask[0])
    source_ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert source_ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (group,) = _report(sr).get_planar_roi_measurement_groups()
    assert group.reference_type == codes.DCM.ReferencedSegmentationFrame
    frame_item = next(i for i in group[0].ContentSequence if i.ValueType == "IMAGE")
    ref = frame_item.ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedFrameNumber) == (seg.SOPInstanceUID, 1)
    _valid(sr_path)
    _valid(seg_path)


def test_revision_gets_new_objects_and_names_the_sr_it_revises(tmp_path: Path) -> None:
    series, sources, mask, uids = _ct_case()
    first = build_result_objects(_ct_read(sources[0]), sources, mask=mask, mask_sop_uids=uids)
    again = build_result_objects(_ct_read(sources[0]), sources, mask=mask, mask_sop_uids=uids)
    assert [o.SOPInstanceUID for o in again] == [o.SOPInstanceUID for o in first]  # same read, same UIDs
    later = _ct_read(sources[0], version="0.2.0", created_at=CREATED + dt.timedelta(days=1))
    sr, seg = build_result_objects(later, sources, mask=mask, mask_sop_uids=uids, predecessors=first)
    assert {sr.SOPInstanceUID, seg.SOPInstanceUID}.isdisjoint(o.SOPInstanceUID for o in first)
    (item,) = sr.PredecessorDocumentsSequence  # the earlier SR only: a SEG is no SR document
    refs = item.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [first[0].SOPInstanceUID]
    path, _ = write_strict(sr, tmp_path, "sr.dcm")
    _valid(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, u: (m[0], u), "frames, rows, columns"),
        (lambda m, u: (m * 2, u), "labels 0 and 1"),
        (lambda m, u: (m.astype(np.int16), u), "uint8"),
        (lambda m, u: (m[:-1], u), "9 frames but 10"),
        (lambda m, u: (m, [*u[:-1], "1.2.3.4"]), "not among the source"),
        (lambda m, u: (m, [*u[:-1], u[0]]), "each source instance once"),
        (lambda m, u: (m[:, :64], u), "64x128 but source"),
    ],
)
def test_bad_masks_get_a_clear_error(change: object, message: str) -> None:
    series, sources, mask, uids = _ct_case()
    read = _ct_read(sources[0])
    bad_mask, bad_uids = change(mask, uids)  # type: ignore[operator]
    with pytest.raises(ResultObjectError, match=message):
        build_seg(read, sources, bad_mask, bad_uids)


def test_validator_reports_a_broken_seg(tmp_path: Path) -> None:
    series, sources, mask, uids = _ct_case()
    seg = build_seg(_ct_read(sources[0]), sources, mask, uids)
    del seg.SegmentSequence[0].SegmentLabel
    path = tmp_path / "broken.dcm"
    path.write_bytes(encode(seg))
    errors, _ = dciodvfy_errors(path)
    assert any("SegmentLabel" in e for e in errors)
