"""The TID 1500 Comprehensive 3D SR of an AI read: built with highdicom, written, read back strictly,
checked item by item, validated by dciodvfy and rendered by dsrdump."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from highdicom.sr import (
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from clinic.ai.models import SYNTHETIC_DISCLAIMER
from integrations.dicom.results import ResultObjectError, build_result_objects, build_sr, device_uid, encode
from integrations.dicom.results import codes as result_codes
from tests.integrations.dicom.results_helpers import (
    CREATED,
    code_of,
    dciodvfy_errors,
    dsrdump,
    make_read,
    real_cr,
    synthetic_cr,
    write_strict,
)

CXR_FINDINGS = [("consolidation", "Consolidation", 0.93, 0.5), ("nodule_mass", "Nodule/mass", 0.21, 0.4)]
MODEL_NAME = "CXR DenseNet121 demo (consolidation, nodule/mass)"


def _report(ds: Dataset) -> MeasurementReport:
    content = Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(content, MeasurementReport)
    return content


def _finding(group: MeasurementsAndQualitativeEvaluations) -> CodedConcept:
    assert group.finding_type is not None
    return group.finding_type


def _texts(ds: Dataset) -> list[str]:
    return [str(elem.value) for elem in ds.iterall() if elem.keyword == "TextValue"]


def _check_valid(path: Path) -> None:
    errors, output = dciodvfy_errors(path)
    assert errors == [], output


def test_chest_radiograph_read_is_a_tid1500_sr(tmp_path: Path) -> None:
    source = synthetic_cr()
    read = make_read(source, CXR_FINDINGS)
    objects = build_result_objects(read, [source])
    assert len(objects) == 1  # no mask, no SEG
    path, sr = write_strict(objects[0], tmp_path, "sr.dcm")

    # Header: same patient and study as the source, so PACS files it with the image.
    assert sr.SOPClassUID == Comprehensive3DSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.PatientID, str(sr.PatientName), sr.AccessionNumber) == ("P0", "TEST^RESULTS", "ACC1")
    assert (sr.CompletionFlag, sr.PreliminaryFlag, sr.VerificationFlag) == (
        "COMPLETE",
        "PRELIMINARY",
        "UNVERIFIED",
    )
    assert (sr.SeriesNumber, sr.InstanceNumber) == (9901, 1)
    assert sr.SeriesDescription == f"AI demo-cxr 0.3.1: {SYNTHETIC_DISCLAIMER}"  # 64 bytes
    assert sr.DeviceUID == device_uid("demo-cxr", "0.3.1")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [source.SOPInstanceUID]

    # IHE AIR: the model as contributing processing equipment with a Device UID per version.
    (model,) = [e for e in sr.ContributingEquipmentSequence if "DeviceUID" in e]
    assert code_of(model.PurposeOfReferenceCodeSequence[0]) == ("109102", "DCM")
    assert (model.Manufacturer, model.ManufacturerModelName, model.SoftwareVersions) == (
        "Smart Clinic Platform",
        MODEL_NAME,
        "0.3.1",
    )
    assert model.DeviceUID == device_uid("demo-cxr", "0.3.1")
    assert SYNTHETIC_DISCLAIMER in model.ContributionDescription

    # Content: device observer, one group per finding with probability, threshold and presence.
    report = _report(sr)
    (observer,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = observer.observer_identifying_attributes
    assert isinstance(attributes, DeviceObserverIdentifyingAttributes)
    assert attributes.uid == device_uid("demo-cxr", "0.3.1") and attributes.name == MODEL_NAME
    groups = {_finding(g).value: g for g in report.get_image_measurement_groups()}
    assert set(groups) == {"95436008", "52988006"}  # Lung consolidation, Lesion (nodule or mass)
    consolidation, lesion = groups["95436008"], groups["52988006"]
    assert [s.value for s in consolidation.finding_sites] == [codes.SCT.Lung]
    assert consolidation.get_measurements(name=codes.DCM.Probability)[0].value == pytest.approx(0.93)
    assert consolidation.get_measurements(name=codes.DCM.ThresholdValue)[0].value == pytest.approx(0.5)
    assert consolidation.get_measurements(name=codes.DCM.Probability)[0].unit == codes.UCUM.NoUnits
    (present,) = consolidation.get_qualitative_evaluations()
    assert present.name.value == "95436008" and present.value == codes.SCT.Present
    assert lesion.get_qualitative_evaluations()[0].value == codes.SCT.Absent
    assert lesion.get_measurements(name=codes.DCM.Probability)[0].value == pytest.approx(0.21)
    for group in groups.values():
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [source.SOPInstanceUID]
        names = {
            str(i.ConceptNameCodeSequence[0].CodeMeaning): i.get("TextValue")
            for i in group[0].ContentSequence
        }
        assert names["Algorithm Name"] == MODEL_NAME and names["Algorithm Version"] == "0.3.1"
    assert SYNTHETIC_DISCLAIMER in _texts(sr)
    (library,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    entry = library.ContentSequence[0].ContentSequence[0]  # TID 1600 Image Library > Group > image
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    _check_valid(path)
    tree = dsrdump(path)
    for expected in ("Lung consolidation", MODEL_NAME, '"Present"', "Probability", SYNTHETIC_DISCLAIMER):
        assert expected in tree, expected


def test_real_chest_radiograph(tmp_path: Path) -> None:
    """pydicom-data's real CR (ISO_IR 100, Latin-1 names): the SR is UTF-8 and keeps the patient."""
    source = real_cr()
    read = make_read(source, CXR_FINDINGS[:1])
    path, sr = write_strict(build_sr(read, [source]), tmp_path, "sr.dcm")
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert (str(sr.PatientName), sr.PatientID) == (str(source.PatientName), source.PatientID)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    # RG1_UNCR has no Imager Pixel Spacing for an Image Library entry: the group names the image.
    assert "111028" not in [i.ConceptNameCodeSequence[0].CodeValue for i in sr.ContentSequence]
    group = _report(sr).get_image_measurement_groups()[0]
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [source.SOPInstanceUID]
    _check_valid(path)
    assert "Lung consolidation" in dsrdump(path)


def test_revision_references_its_predecessor(tmp_path: Path) -> None:
    source = synthetic_cr(seed=3)
    first = build_sr(make_read(source, CXR_FINDINGS), [source])
    _, first_back = write_strict(first, tmp_path, "v1.dcm")
    later = CREATED + dt.timedelta(days=30)
    revised_read = make_read(source, CXR_FINDINGS, model_version="0.4.0", created_at=later)
    (revised,) = build_result_objects(revised_read, [source], predecessors=[first_back])
    path, sr = write_strict(revised, tmp_path, "v2.dcm")

    item = sr.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == source.StudyInstanceUID
    series = item.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first_back.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first_back.SOPInstanceUID
    assert sr.SOPInstanceUID != first_back.SOPInstanceUID
    # A new model version is a new device; the finding it tracks is the same one.
    assert sr.DeviceUID != first_back.DeviceUID == device_uid("demo-cxr", "0.3.1")
    old = {_finding(g).value: g.tracking_uid for g in _report(first_back).get_image_measurement_groups()}
    new = {_finding(g).value: g.tracking_uid for g in _report(sr).get_image_measurement_groups()}
    assert old == new
    _check_valid(path)


def test_non_synthetic_read_carries_no_label(tmp_path: Path) -> None:
    source = real_cr()
    read = make_read(source, CXR_FINDINGS, model_name="Vendor CXR", model_id="vendor-cxr", synthetic=False)
    path, sr = write_strict(build_sr(read, [source]), tmp_path, "sr.dcm")
    assert sr.SeriesDescription == "AI: Vendor CXR 0.3.1"
    assert b"not for clinical use" not in path.read_bytes()
    meanings = [i.ConceptNameCodeSequence[0].CodeMeaning for i in sr.ContentSequence]
    assert "Qualitative Evaluations" not in meanings
    _check_valid(path)


def test_uids_are_stable_per_read_and_model_version() -> None:
    source = synthetic_cr(seed=4)
    a = build_sr(make_read(source, CXR_FINDINGS), [source])
    b = build_sr(make_read(source, CXR_FINDINGS), [source])
    c = build_sr(make_read(source, CXR_FINDINGS, created_at=CREATED + dt.timedelta(seconds=1)), [source])
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert c.SOPInstanceUID != a.SOPInstanceUID
    assert device_uid("m", "1") == device_uid("m", "1") != device_uid("m", "2") != device_uid("n", "1")
    assert len(device_uid("a" * 64, "b" * 32)) <= 64


def test_unknown_codes_and_read_level_measurements(tmp_path: Path) -> None:
    """A finding without a standard concept is coded locally with its label; measurements of the
    read as a whole get a group of their own; a code over 16 characters uses Long Code Value."""
    source = synthetic_cr(seed=5)
    findings = [("pleural_effusion_large", "Large pleural effusion", 0.7, 0.5)]
    numbers = [("", "lung_field_area_ratio", "Lung field area ratio", 0.42, "1")]
    path, sr = write_strict(build_sr(make_read(source, findings, numbers), [source]), tmp_path, "sr.dcm")
    groups = _report(sr).get_image_measurement_groups()
    assert len(groups) == 2
    local = _finding(groups[0])
    assert (local.value, local.scheme_designator, local.meaning) == (
        "pleural_effusion_large",
        result_codes.LOCAL_SCHEME,
        "Large pleural effusion",
    )
    (ratio,) = groups[1].get_measurements()
    assert ratio.name.meaning == "Lung field area ratio" and ratio.value == pytest.approx(0.42)
    assert groups[1].finding_type is None
    _check_valid(path)


def test_bad_inputs_get_a_clear_error() -> None:
    source, other = synthetic_cr(seed=6), synthetic_cr(seed=7)
    read = make_read(source, CXR_FINDINGS)
    with pytest.raises(ResultObjectError, match="read's series"):
        build_sr(make_read(other, CXR_FINDINGS), [source])
    elsewhere = make_read(source, CXR_FINDINGS)
    elsewhere.sop_instance_uid = str(other.SOPInstanceUID)
    with pytest.raises(ResultObjectError, match="not among the sources"):
        build_sr(elsewhere, [source])
    with pytest.raises(ResultObjectError, match="none given"):
        build_sr(read, [])
    two_studies = make_read(source, CXR_FINDINGS)
    two_studies.series_uid = ""
    with pytest.raises(ResultObjectError, match="one study"):
        build_sr(two_studies, [source, other])
    with pytest.raises(ResultObjectError, match="SR documents only"):
        build_sr(read, [source], predecessors=[source])
    with pytest.raises(ResultObjectError, match="no findings"):
        build_sr(make_read(source, []), [source])


def test_validator_reports_a_broken_sr(tmp_path: Path) -> None:
    """The dciodvfy check above can fail: a Type 1 attribute removed is reported as an Error."""
    source = synthetic_cr(seed=8)
    sr = build_sr(make_read(source, CXR_FINDINGS), [source])
    del sr.ContentSequence[0].ConceptNameCodeSequence
    path = tmp_path / "broken.dcm"
    path.write_bytes(encode(sr))
    errors, _ = dciodvfy_errors(path)
    assert any("ConceptNameCodeSequence" in e for e in errors)
