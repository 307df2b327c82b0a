"""The AI read as a Comprehensive 3D SR (PS3.3 A.35.13) following PS3.16 TID 1500 "Measurement Report".

Tree (``dsrdump`` shows it)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")          TID 1500
      HAS CONCEPT MOD  Language of Content Item and Descendants    TID 1204
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/Manufacturer/Model  TID 1002/1004
      HAS CONCEPT MOD  Procedure reported (CID 100)
      CONTAINS         Image Library: the radiograph (not a series)  TID 1600
      CONTAINS         Imaging Measurements
        CONTAINS       Measurement Group per finding                TID 1501 / 1410 / 1411
                         Tracking Identifier + UID, Finding, Finding Site, Algorithm (TID 4019),
                         Probability, Threshold Value (TID 300), <finding> = Present | Absent,
                         the finding's measurements (count, largest diameter, volume, TID 300)
                         and, with a SEG, the Referenced Segment
      CONTAINS         Qualitative Evaluations: Comment = "synthetic demo model — not for clinical use"

The group of the segmented finding references the SEG segment (TID 1411 volumetric, or TID 1410
planar for a single image); other groups are TID 1501. Measurements of the read as a whole
(``finding_code`` empty or of no finding) get a group of their own. The header: patient and study
copied from the source (same Study Instance UID: the SR lands in the study it describes), General
Equipment and Contributing Equipment naming the model (IHE AIR), Current Requested Procedure
Evidence listing the source images (and the SEG), Predecessor Documents listing the objects this
one revises (PS3.3 C.17.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    ReferencedSegment,
    ReferencedSegmentationFrame,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForSegmentation,
    SourceSeriesForSegmentation,
    TextContentItem,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from clinic.ai.models import AIFinding, AIMeasurement, AIRead
from integrations.dicom.results import codes, equipment
from integrations.dicom.results.errors import ResultObjectError
from integrations.dicom.results.sources import (
    check_sources,
    library_describable,
    segmented_finding,
    tracking_uid,
)

DEFAULT_MANUFACTURER = equipment.DEFAULT_MANUFACTURER

_Group = (
    MeasurementsAndQualitativeEvaluations
    | PlanarROIMeasurementsAndQualitativeEvaluations
    | VolumetricROIMeasurementsAndQualitativeEvaluations
)
_SegmentReference = ReferencedSegment | ReferencedSegmentationFrame


class _GroupArgs(TypedDict):
    """What every TID 1501 / 1410 / 1411 group of ours has."""

    tracking_identifier: TrackingIdentifier
    finding_type: Code | None
    finding_sites: list[FindingSite] | None
    algorithm_id: AlgorithmIdentification
    measurements: list[Measurement] | None
    qualitative_evaluations: list[QualitativeEvaluation] | None


# The group's TID 4019 Algorithm Identification (TID 1501 row 11) names the model for all its
# measurements and evaluations; repeating it in each TID 300 would add three items per number.


def _measurement(m: AIMeasurement) -> Measurement:
    concept = codes.measurement_concept(m.code, m.label)
    return Measurement(
        name=concept.name, value=float(m.value), unit=codes.unit_code(m.unit), derivation=concept.derivation
    )


def _finding_items(
    finding: AIFinding, measurements: Sequence[AIMeasurement]
) -> tuple[list[Measurement], list[QualitativeEvaluation]]:
    """TID 300 measurements (probability, operating threshold, the finding's own numbers) and
    the qualitative evaluation "<finding> = Present | Absent" of one finding."""
    concept = codes.finding_concept(finding.code, finding.label)
    probability = Measurement(name=codes.PROBABILITY, value=float(finding.probability), unit=codes.NO_UNITS)
    threshold = Measurement(name=codes.THRESHOLD, value=float(finding.threshold), unit=codes.NO_UNITS)
    numbers = [probability, threshold, *(_measurement(m) for m in measurements)]
    presence = codes.PRESENT if finding.positive else codes.ABSENT
    return numbers, [QualitativeEvaluation(name=concept.finding, value=presence)]


def _group(
    read: AIRead,
    sources: Sequence[Dataset],
    code: str,
    label: str,
    items: tuple[list[Measurement], list[QualitativeEvaluation]],
    manufacturer: str,
    segment: _SegmentReference | None,
) -> _Group:
    """One measurement group: TID 1410 with a radiograph's SEG frame, TID 1411 with a series'
    SEG segment, else TID 1501."""
    concept = codes.finding_concept(code, label) if code else None
    args = _GroupArgs(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid(sources[0], read, code or "read"), identifier=label or "AI read"
        ),
        finding_type=concept.finding if concept else None,
        finding_sites=[FindingSite(concept.site)] if concept and concept.site else None,
        algorithm_id=equipment.sr_algorithm(read, manufacturer),
        measurements=items[0] or None,
        qualitative_evaluations=items[1] or None,
    )
    if isinstance(segment, ReferencedSegmentationFrame):
        return PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **args)
    if isinstance(segment, ReferencedSegment):
        return VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **args)
    # A radiograph is named as the group's source; a series' slices are named by the evidence.
    images = [SourceImageForMeasurementGroup.from_source_image(sources[0])] if len(sources) == 1 else None
    return MeasurementsAndQualitativeEvaluations(source_images=images, **args)


def _groups(
    read: AIRead,
    sources: Sequence[Dataset],
    manufacturer: str,
    segment: _SegmentReference | None,
    segment_finding: str,
) -> list[_Group]:
    """A group per finding, with the measurements tied to it; one more for the measurements of
    the read as a whole, and for the segment when no finding is the segmented one."""
    finding_codes = {f.code for f in read.findings}
    groups: list[_Group] = []
    for finding in read.findings:
        own = [m for m in read.measurements if m.finding_code == finding.code]
        items = _finding_items(finding, own)
        ref = segment if finding.code == segment_finding else None
        groups.append(_group(read, sources, finding.code, finding.label, items, manufacturer, ref))
    rest = [m for m in read.measurements if m.finding_code not in finding_codes]
    orphan_segment = segment if segment is not None and segment_finding not in finding_codes else None
    if rest or orphan_segment is not None:
        code = segment_finding if orphan_segment is not None else ""
        items = ([_measurement(m) for m in rest], [])
        groups.append(_group(read, sources, code, "", items, manufacturer, orphan_segment))
    if not groups:
        raise ResultObjectError("TID 1500 needs at least one measurement group: the read has no findings")
    return groups


def _disclaimer_container(text: str) -> ContainerContentItem:
    """TID 1500 row 12 "Qualitative Evaluations" holding the disclaimer as a TEXT Comment."""
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    comment = TextContentItem(
        name=codes.COMMENT, value=text, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence([comment])
    return container


def _referenced_segment(
    segmentation: Dataset, segment_number: int, sources: Sequence[Dataset]
) -> _SegmentReference:
    """TID 1410 Referenced Segmentation Frame (one radiograph, one frame) or TID 1411 Referenced
    Segment with its source series (a CT series). Built by hand: highdicom's
    ``from_segmentation`` looks for the Segment Identification in the per-frame groups only, and a
    one-segment SEG keeps it in the shared ones.
    """
    if len(sources) == 1:
        frame = ReferencedSegmentationFrame(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            frame_number=1,
            segment_number=segment_number,
            source_image=SourceImageForSegmentation.from_source_image(sources[0]),
        )
        # PS3.3 Table 10-3: Referenced Segment Number only when no Referenced Frame Number is
        # given (dciodvfy: "Shall not be present"); the frame already is the segment's frame.
        del frame[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
        return frame
    return ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=segment_number,
        source_series=SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)),
    )


def _with_library(image_library: bool | None, sources: Sequence[Dataset]) -> bool:
    """Whether to include the TID 1600 Image Library (optional in TID 1500)."""
    describable = all(library_describable(s) for s in sources)
    if image_library and not describable:
        raise ResultObjectError(
            "an Image Library entry (TID 1603/1604) needs Patient Orientation and Imager Pixel "
            "Spacing (radiographs) or the plane geometry (CT/MR/PT), which a source lacks"
        )
    return describable and (len(sources) == 1 if image_library is None else image_library)


def _check_predecessors(predecessors: Sequence[Dataset]) -> None:
    for pre in predecessors:
        if pre.get("Modality") != "SR":
            raise ResultObjectError(
                "Predecessor Documents Sequence (PS3.3 C.17.2) lists SR documents only: "
                f"predecessor {pre.get('SOPInstanceUID', '?')} has Modality {pre.get('Modality', '')!r}"
            )


def build_sr(
    read: AIRead,
    sources: Sequence[Dataset],
    *,
    segmentation: Dataset | None = None,
    segment_number: int = 1,
    segment_finding: str | None = None,
    predecessors: Sequence[Dataset] = (),
    manufacturer: str = DEFAULT_MANUFACTURER,
    series_number: int = 9901,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    image_library: bool | None = None,
) -> Comprehensive3DSR:
    """The TID 1500 Comprehensive 3D SR of *read* on *sources* (see the module docstring).

    *segmentation* (a SEG of the same study, e.g. from :func:`build_seg`) is referenced by the
    group of finding *segment_finding* (default: :func:`segmented_finding`). *image_library*
    (TID 1600) defaults to a single image whose header has what the entry describes: for a
    series the evidence sequence and the SEG's source series name the images, and a 120-slice
    library would cost ~2.3 s and 0.5 MB (bench/result_objects.py) for nothing a viewer needs.
    UIDs default to ones derived from the read (:func:`equipment.result_uid`), so that building
    again gives the same object identity.
    Raises :class:`ResultObjectError` naming the rule a bad input breaks.
    """
    check_sources(read, sources)
    _check_predecessors(predecessors)
    segment = None
    evidence = list(sources)
    if segmentation is not None:
        if segmentation.SOPClassUID != SegmentationStorage:
            raise ResultObjectError("segmentation must be a Segmentation Storage instance (PS3.3 A.51)")
        if segmentation.StudyInstanceUID != sources[0].StudyInstanceUID:
            raise ResultObjectError("the SEG must belong to the study of its sources (PS3.3 C.17.2.3)")
        segment = _referenced_segment(segmentation, segment_number, sources)
        evidence.append(segmentation)
    pre_uids = [str(p.SOPInstanceUID) for p in predecessors]
    device = ObserverContext(
        observer_type=CodedConcept.from_code(codes.DEVICE_OBSERVER),
        observer_identifying_attributes=equipment.device_observer(read, manufacturer),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=codes.procedure_reported(str(sources[0].get("Modality", ""))),
        imaging_measurements=_groups(
            read, sources, manufacturer, segment, segment_finding or segmented_finding(read)
        ),
        referenced_images=list(sources) if _with_library(image_library, sources) else None,
    )
    label = equipment.disclaimer(read)
    if label:
        report[0].ContentSequence.append(_disclaimer_container(label))
    sr = Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid or equipment.result_uid(read, "sr-series", pre_uids),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or equipment.result_uid(read, "sr", pre_uids),
        instance_number=instance_number,
        manufacturer=equipment.fit(manufacturer),
        is_complete=True,
        is_final=False,  # unreviewed AI output: PRELIMINARY, UNVERIFIED until a radiologist signs
        previous_versions=list(predecessors) or None,
        contributing_equipment=[equipment.contributing_equipment(read, manufacturer)],
        series_description=equipment.series_description(read),
        manufacturer_model_name=equipment.fit(read.model_name),
        software_versions=equipment.fit(read.model_version),
        specific_character_set="ISO_IR 192",  # UTF-8: the disclaimer's dash, names in any script
    )
    # General Equipment Device UID (PS3.3 C.7.5.1), as IHE AIR asks; highdicom has no argument.
    sr.DeviceUID = equipment.device_uid(read.model_id, read.model_version)
    return sr
