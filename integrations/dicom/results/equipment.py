"""Who made a result object: the AI model as equipment, algorithm and observer, and our UIDs.

IHE Radiology AI Results (AIR) asks every AI result to identify the algorithm that produced it:
General Equipment (PS3.3 C.7.5.1) and a Contributing Equipment Sequence item (PS3.3 C.12.1.1.8:
Manufacturer, Manufacturer's Model Name, Software Versions, Device UID, purpose of reference
(109102, DCM, "Processing Equipment") from CID 7005), the Algorithm Identification of TID 4019 and
of the Segment Description (PS3.3 C.8.20.2), and a device observer (TID 1004).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from highdicom import ContributingEquipment
from highdicom.content import AlgorithmIdentificationSequence
from highdicom.sr import AlgorithmIdentification, DeviceObserverIdentifyingAttributes

from clinic.ai.models import SYNTHETIC_DISCLAIMER, AIRead
from integrations.dicom.results import codes

DEFAULT_MANUFACTURER = "Smart Clinic Platform"

#: Long String (LO) and Short Text limits of PS3.5 Table 6.2-1, counted in bytes of UTF-8 so that
#: a value also fits where a validator counts bytes.
LO_MAX = 64
ST_MAX = 1024


def fit(text: str, limit: int = LO_MAX, *, ellipsis: str = "...") -> str:
    """*text* cut to at most *limit* bytes of UTF-8 (whole characters), marked with *ellipsis*."""
    if len(text.encode("utf-8")) <= limit:
        return text
    budget = limit - len(ellipsis.encode("utf-8"))
    out = text
    while out and len(out.encode("utf-8")) > budget:
        out = out[:-1]
    return out.rstrip() + ellipsis


#: Namespace of our name-based UUIDs (RFC 4122 §4.3), itself the UUID of our URL.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:smart-clinic-platform:ai-results")


def derived_uid(*parts: str) -> str:
    """A UID that is a function of *parts*: ``2.25.`` and the integer of the name-based (SHA-1)
    UUID of the parts (PS3.5 B.2). (``pydicom.uid.generate_uid`` ignores its entropy sources
    under the ``2.25`` root and returns a random UUID.)"""
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(31).join(parts)).int}"


def device_uid(model_id: str, model_version: str) -> str:
    """The Device UID (0018,1002) of one model version: the same for the same model id and
    version, another for any other (:func:`derived_uid`)."""
    return derived_uid("device", model_id, model_version)


def result_uid(read: AIRead, kind: str, extra: Iterable[str] = ()) -> str:
    """A UID for result object *kind* of *read* ("sr", "sr-series", "seg", ...).

    Derived from what identifies the read (the series and instance it read, the model id and
    version, its creation time) so that building the objects of one read again gives the same
    UIDs: a redelivered task cannot put a second copy of a result into PACS (DESIGN.md §4 rule 3).
    *extra* (e.g. the predecessors' UIDs) makes a revision another object.
    """
    created = read.created_at.isoformat() if read.created_at is not None else ""
    identity = (read.series_uid or "", read.sop_instance_uid, read.model_id, read.model_version, created)
    return derived_uid("result", kind, *identity, *extra)


def disclaimer(read: AIRead) -> str:
    """The label every result of a synthetic demo model carries; empty for other models."""
    if not read.is_synthetic:
        return ""
    return read.disclaimer or SYNTHETIC_DISCLAIMER


def series_description(read: AIRead, prefix: str = "AI") -> str:
    """``"AI: <model name> <version> (<disclaimer>)"`` as a Long String (64 bytes).

    The version and the disclaimer must show in every PACS series list, so when that does not
    fit, the model id (short, e.g. ``demo-cxr``) stands in for the name, the punctuation gets
    shorter, and at last the model id is cut.
    """
    label = disclaimer(read)
    version = read.model_version
    if not label:
        return fit(f"{prefix}: {read.model_name} {version}")
    candidates = (
        f"{prefix}: {read.model_name} {version} ({label})",
        f"{prefix}: {read.model_id} {version} ({label})",
        f"{prefix} {read.model_id} {version}: {label}",
    )
    for text in candidates:
        if len(text.encode("utf-8")) <= LO_MAX:
            return text
    tail = f" {version}: {label}"
    return fit(f"{prefix} {read.model_id}", max(LO_MAX - len(tail.encode("utf-8")), 8)) + tail


def contributing_equipment(read: AIRead, manufacturer: str) -> ContributingEquipment:
    """The Contributing Equipment item of the model (PS3.3 C.12.1.1.8; IHE AIR)."""
    item = ContributingEquipment(
        manufacturer=fit(manufacturer),
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=fit(read.model_name),
        software_versions=fit(read.model_version),
        contribution_datetime=read.created_at,
        contribution_description=fit(
            "; ".join(p for p in (f"AI model {read.model_id}", disclaimer(read)) if p), ST_MAX
        ),
    )
    item.DeviceUID = device_uid(read.model_id, read.model_version)
    return item


def sr_algorithm(read: AIRead, manufacturer: str) -> AlgorithmIdentification:
    """TID 4019 Algorithm Identification: name and version of the model."""
    return AlgorithmIdentification(
        name=read.model_name, version=read.model_version, manufacturer=manufacturer
    )


def seg_algorithm(read: AIRead, manufacturer: str) -> AlgorithmIdentificationSequence:
    """Segment Algorithm Identification (PS3.3 C.8.20.2, family from CID 7162)."""
    return AlgorithmIdentificationSequence(
        name=fit(read.model_name),
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=fit(read.model_version),
        source=fit(manufacturer),
    )


def device_observer(read: AIRead, manufacturer: str) -> DeviceObserverIdentifyingAttributes:
    """TID 1004 Device Observer Identifying Attributes of the model."""
    return DeviceObserverIdentifyingAttributes(
        uid=device_uid(read.model_id, read.model_version),
        name=read.model_name,
        manufacturer_name=manufacturer,
        model_name=f"{read.model_id} {read.model_version}",
    )
