"""Coded concepts of our AI results, looked up rather than invented (PS3.16 Annex D, SNOMED CT, UCUM).

Every machine code an AI read carries (``AIFinding.code``, ``AIMeasurement.code``,
``AIMeasurement.unit``) is mapped here to a concept of a standard coding scheme. The choices:

- ``consolidation`` → (95436008, SCT, "Lung consolidation"). Not in pydicom's dictionary (DICOM
  lists no context group with it); the SNOMED CT disorder concept, finding site Lung.
- ``nodule_mass`` → (52988006, SCT, "Lesion"), finding site Lung: the demo model's single class
  covers nodules *and* masses (CheXpert's "Lung Lesion"); SNOMED CT has no concept for "nodule or
  mass", and coding it as "Nodule" or "Mass" alone would say more than the model does.
- ``lung_nodule`` → (27925004, SCT, "Nodule") (CID 6102, CID 7151), finding site Lung.
- Presence: (52101004, SCT, "Present") / (272519000, SCT, "Absent") (CID 240).
- Probability: (122157, DCM, "Probability"), unit UCUM unity ``1`` "no units" (PS3.16 §7.2.2:
  unity, Code Meaning from Annex G). "Probability of cancer" (111047) would claim malignancy.
- Operating threshold: (122411, DCM, "Threshold Value"), unit ``1``.
- ``nodule_count`` → (246206008, SCT, "Number of lesions"), unit ``{count}`` with Code Meaning
  "count" (PS3.16 §7.2.2: counts in UCUM annotations use the text in braces as Code Meaning).
- ``largest_diameter`` → (81827009, SCT, "Diameter") (CID 7470) with derivation
  (56851009, SCT, "Maximum") (CID 7464).
- ``total_volume`` → (118565006, SCT, "Volume") (CID 7469).
- Procedure reported (TID 1500 row 5, CID 100): (25045-6, LN, "CT unspecified body region") for
  CT, (43468-8, LN, "XR unspecified body region") for CR/DX, else (363679005, SCT, "Imaging
  procedure").
- The TID 1500 "Qualitative Evaluations" container is (C0034375, UMLS, "Qualitative Evaluations")
  (PS3.16 TID 1500 row 12; not in pydicom's dictionary); the disclaimer is a TEXT item
  (121106, DCM, "Comment") in it.

A code we have no concept for is coded in our local scheme :data:`LOCAL_SCHEME` (PS3.16 §8: a
private scheme designator starts with ``99``) with the read's own label, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

#: Coding scheme designator of our local codes (PS3.3 8.1: "99" prefix for private schemes).
LOCAL_SCHEME = "99SMARTCLINIC"
#: The finding a SEG segments by default, whose SR group references the segment (the CT nodule model).
DEFAULT_SEGMENT_FINDING = "lung_nodule"

LUNG_CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT: Code = codes.DCM.Comment
PROBABILITY: Code = codes.DCM.Probability
THRESHOLD: Code = codes.DCM.ThresholdValue
PRESENT: Code = codes.SCT.Present
ABSENT: Code = codes.SCT.Absent
LUNG: Code = codes.SCT.Lung
NO_UNITS: Code = codes.UCUM.NoUnits
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = codes.SCT.MorphologicallyAbnormalStructure
ARTIFICIAL_INTELLIGENCE: Code = codes.DCM.ArtificialIntelligence
PROCESSING_EQUIPMENT: Code = codes.DCM.ProcessingEquipment
DEVICE_OBSERVER: Code = codes.DCM.Device


@dataclass(frozen=True)
class FindingConcept:
    """What a finding is (TID 1501 "Finding") and where (TID 1501 "Finding Site")."""

    finding: Code
    site: Code | None = None


@dataclass(frozen=True)
class MeasurementConcept:
    """A measurement's concept name (TID 300 row 1) and its derivation (TID 300 row 4), if any."""

    name: Code
    derivation: Code | None = None


FINDINGS: dict[str, FindingConcept] = {
    "consolidation": FindingConcept(LUNG_CONSOLIDATION, LUNG),
    "nodule_mass": FindingConcept(codes.SCT.Lesion, LUNG),
    "lung_nodule": FindingConcept(codes.SCT.Nodule, LUNG),
}

MEASUREMENTS: dict[str, MeasurementConcept] = {
    "nodule_count": MeasurementConcept(codes.SCT.NumberOfLesions),
    "largest_diameter": MeasurementConcept(codes.SCT.Diameter, codes.SCT.Maximum),
    "total_volume": MeasurementConcept(codes.SCT.Volume),
}

#: Code Meanings of the UCUM units we write (PS3.16 §7.2.2); other units use the code itself.
_UNIT_MEANINGS = {
    "1": "no units",
    "{count}": "count",
    "mm": "mm",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "ml": "milliliter",
    "%": "Percent",
    "[hnsf'U]": "Hounsfield unit",
}


def _local(value: str, meaning: str) -> Code:
    # Code Meaning is LO (64 characters); values over 16 characters go to Long Code Value.
    return Code(value, LOCAL_SCHEME, (meaning or value)[:64])


def finding_concept(code: str, label: str) -> FindingConcept:
    """The concept of finding *code*; a local code with *label* when there is no standard one."""
    known = FINDINGS.get(code)
    return known if known is not None else FindingConcept(_local(code, label))


def measurement_concept(code: str, label: str) -> MeasurementConcept:
    """The concept of measurement *code*; a local code with *label* when there is no standard one."""
    known = MEASUREMENTS.get(code)
    return known if known is not None else MeasurementConcept(_local(code, label))


def unit_code(unit: str) -> Code:
    """The UCUM code of *unit* (case-sensitive UCUM, PS3.16 §7.2.2); empty means unity."""
    value = unit or "1"
    if value.startswith("{") and value.endswith("}") and value not in _UNIT_MEANINGS:
        return Code(value, "UCUM", value[1:-1])
    return Code(value, "UCUM", _UNIT_MEANINGS.get(value, value))


def procedure_reported(modality: str) -> Code:
    """TID 1500 "Procedure reported" for a source of *modality*, from CID 100."""
    if modality == "CT":
        return codes.cid100.CTUnspecifiedBodyRegion
    if modality in ("CR", "DX"):
        return codes.cid100.XRUnspecifiedBodyRegion
    return codes.cid100.ImagingProcedure
