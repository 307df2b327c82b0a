"""ORU^R01 vital signs (IHE PCD TF-2 PCD-01 "Communicate PCD Data", and EHR flowsheets) ->
timestamped observations per patient.

Walks the message in order (HL7 v2.5.1 §7.3.1 ORU_R01): a PID starts a patient, a PV1 its visit,
an OBR an observation group (OBR-7 its time), each OBX one observation:

* OBX-3 code: MDC (ISO/IEEE 11073-10101 numeric code, or its reference id ``MDC_...`` in component
  2) or LOINC (``LN``); :data:`CODES` says which :class:`~clinic.observations.models.VitalSign` it
  is. A code we do not know is **kept** (``code`` "", its source code and system stored) and named in
  the notes, never dropped. So is a known code with a unit we cannot convert or a value we cannot
  read.
* OBX-5 value by OBX-2 (NM, SN, ST, CWE/CE, TX); an OBX without a value is a PCD-01 device-hierarchy
  row (MDS/VMD/channel) and is counted in the notes, not stored.
* OBX-6 unit: MDC unit codes and UCUM; stored in UCUM, converted where the vital sign has one unit
  (degF -> Cel, kPa -> mm[Hg]).
* time: OBX-14, else OBR-7, else MSH-7 (noted); device: OBX-18 (EI, the PCD-01 equipment instance).
* OBX-11 (table 0085): F final, C amended, P/R/S/I preliminary, D/W entered-in-error; X (no result
  could be obtained) is not stored and is noted.

Observations are written idempotently on their natural key (``clinic.observations.service``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from sqlalchemy.orm import Session

from clinic.observations.models import VitalSign
from clinic.observations.service import ObservationIn, record_observations
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.mapping.common import Context, encounter_id, encounter_in, patient_id
from integrations.hl7v2.mapping.parse import Message, Segment, coded, parse_datetime
from integrations.hl7v2.tables import ErrorCode

TRIGGERS = frozenset({"R01"})

MDC, LOINC, SNOMED = "MDC", "LN", "SCT"
#: Coding-system names senders use (HL7 table 0396 and common variants) -> ours.
SYSTEM_ALIASES = {
    "MDC": MDC,
    "ISO11073": MDC,
    "IEEE11073": MDC,
    "LN": LOINC,
    "LOINC": LOINC,
    "2.16.840.1.113883.6.1": LOINC,
    "SCT": SNOMED,
    "SNOMED-CT": SNOMED,
    "SNOMEDCT": SNOMED,
    "SNM": SNOMED,
}

#: (system, code) -> vital sign. MDC numeric codes are partition * 65536 + term code (11073-10101).
CODES: dict[tuple[str, str], VitalSign] = {
    (MDC, "147842"): VitalSign.HEART_RATE,  # MDC_ECG_HEART_RATE
    (MDC, "149514"): VitalSign.HEART_RATE,  # MDC_PULS_RATE
    (MDC, "149530"): VitalSign.HEART_RATE,  # MDC_PULS_OXIM_PULS_RATE
    (MDC, "149546"): VitalSign.HEART_RATE,  # MDC_PULS_RATE_NON_INV
    (MDC, "151562"): VitalSign.RESPIRATORY_RATE,  # MDC_RESP_RATE
    (MDC, "151570"): VitalSign.RESPIRATORY_RATE,  # MDC_AWAY_RESP_RATE
    (MDC, "151578"): VitalSign.RESPIRATORY_RATE,  # MDC_TTHOR_RESP_RATE
    (MDC, "151594"): VitalSign.RESPIRATORY_RATE,  # MDC_CO2_RESP_RATE
    (MDC, "150456"): VitalSign.SPO2,  # MDC_PULS_OXIM_SAT_O2
    (MDC, "150344"): VitalSign.TEMPERATURE,  # MDC_TEMP
    (MDC, "150364"): VitalSign.TEMPERATURE,  # MDC_TEMP_BODY
    (MDC, "150368"): VitalSign.TEMPERATURE,  # MDC_TEMP_CORE
    (MDC, "150392"): VitalSign.TEMPERATURE,  # MDC_TEMP_TYMP
    (MDC, "188420"): VitalSign.TEMPERATURE,  # MDC_TEMP_RECT
    (MDC, "188424"): VitalSign.TEMPERATURE,  # MDC_TEMP_ORAL
    (MDC, "188428"): VitalSign.TEMPERATURE,  # MDC_TEMP_EAR
    (MDC, "188452"): VitalSign.TEMPERATURE,  # MDC_TEMP_AXILLA
    (MDC, "150021"): VitalSign.SYSTOLIC_BP,  # MDC_PRESS_BLD_NONINV_SYS
    (MDC, "150022"): VitalSign.DIASTOLIC_BP,  # MDC_PRESS_BLD_NONINV_DIA
    (LOINC, "8867-4"): VitalSign.HEART_RATE,
    (LOINC, "9279-1"): VitalSign.RESPIRATORY_RATE,
    (LOINC, "59408-5"): VitalSign.SPO2,  # by pulse oximetry
    (LOINC, "2708-6"): VitalSign.SPO2,  # in arterial blood (the FHIR vital-signs profile's code)
    (LOINC, "8310-5"): VitalSign.TEMPERATURE,
    (LOINC, "8480-6"): VitalSign.SYSTOLIC_BP,
    (LOINC, "8462-4"): VitalSign.DIASTOLIC_BP,
    (LOINC, "3151-8"): VitalSign.SUPPLEMENTAL_O2,  # inhaled oxygen flow rate, L/min
    (LOINC, "67775-7"): VitalSign.CONSCIOUSNESS,  # level of responsiveness (AVPU)
    (LOINC, "80288-4"): VitalSign.CONSCIOUSNESS,  # level of consciousness
    (SNOMED, "1104441000000107"): VitalSign.CONSCIOUSNESS,  # ACVPU scale score (NEWS2)
}
#: MDC reference ids of the numeric codes above, for senders that put ``MDC_...`` in OBX-3.
REFIDS = {
    "MDC_ECG_HEART_RATE": "147842",
    "MDC_PULS_RATE": "149514",
    "MDC_PULS_OXIM_PULS_RATE": "149530",
    "MDC_PULS_RATE_NON_INV": "149546",
    "MDC_RESP_RATE": "151562",
    "MDC_AWAY_RESP_RATE": "151570",
    "MDC_TTHOR_RESP_RATE": "151578",
    "MDC_CO2_RESP_RATE": "151594",
    "MDC_PULS_OXIM_SAT_O2": "150456",
    "MDC_TEMP": "150344",
    "MDC_TEMP_BODY": "150364",
    "MDC_TEMP_CORE": "150368",
    "MDC_TEMP_TYMP": "150392",
    "MDC_TEMP_RECT": "188420",
    "MDC_TEMP_ORAL": "188424",
    "MDC_TEMP_EAR": "188428",
    "MDC_TEMP_AXILLA": "188452",
    "MDC_PRESS_BLD_NONINV_SYS": "150021",
    "MDC_PRESS_BLD_NONINV_DIA": "150022",
}

#: MDC unit codes (partition 4, 11073-10101 dimensions) -> UCUM.
MDC_UNITS = {
    "262656": "1",  # MDC_DIM_DIMLESS
    "262688": "%",  # MDC_DIM_PERCENT
    "264864": "/min",  # MDC_DIM_BEAT_PER_MIN
    "264928": "/min",  # MDC_DIM_RESP_PER_MIN
    "265216": "L/min",  # MDC_DIM_X_L_PER_MIN
    "265987": "kPa",  # MDC_DIM_KILO_PASCAL
    "266016": "mm[Hg]",  # MDC_DIM_MMHG
    "266560": "[degF]",  # MDC_DIM_FAHR
    "268192": "Cel",  # MDC_DIM_DEGC
}
MDC_UNIT_REFIDS = {
    "MDC_DIM_DIMLESS": "262656",
    "MDC_DIM_PERCENT": "262688",
    "MDC_DIM_BEAT_PER_MIN": "264864",
    "MDC_DIM_RESP_PER_MIN": "264928",
    "MDC_DIM_X_L_PER_MIN": "265216",
    "MDC_DIM_KILO_PASCAL": "265987",
    "MDC_DIM_MMHG": "266016",
    "MDC_DIM_FAHR": "266560",
    "MDC_DIM_DEGC": "268192",
}
#: Spellings of UCUM units seen in the field -> the UCUM code.
UNIT_ALIASES = {
    "{beats}/min": "/min",
    "{beat}/min": "/min",
    "{breaths}/min": "/min",
    "{breath}/min": "/min",
    "{resp}/min": "/min",
    "1/min": "/min",
    "bpm": "/min",
    "degc": "Cel",
    "°c": "Cel",
    "c": "Cel",
    "cel": "Cel",
    "degf": "[degF]",
    "°f": "[degF]",
    "[degf]": "[degF]",
    "mmhg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "kpa": "kPa",
    "l/min": "L/min",
    "%": "%",
}


@dataclass(frozen=True)
class Conversion:
    unit: str
    factor: float = 1.0
    offset: float = 0.0


#: The UCUM unit each numeric vital sign is stored in, and the units converted into it.
UNITS: dict[VitalSign, dict[str, Conversion]] = {
    VitalSign.HEART_RATE: {"/min": Conversion("/min")},
    VitalSign.RESPIRATORY_RATE: {"/min": Conversion("/min")},
    VitalSign.SPO2: {"%": Conversion("%")},
    VitalSign.TEMPERATURE: {"Cel": Conversion("Cel"), "[degF]": Conversion("Cel", 5 / 9, -32 * 5 / 9)},
    VitalSign.SYSTOLIC_BP: {"mm[Hg]": Conversion("mm[Hg]"), "kPa": Conversion("mm[Hg]", 7.500615758)},
    VitalSign.DIASTOLIC_BP: {"mm[Hg]": Conversion("mm[Hg]"), "kPa": Conversion("mm[Hg]", 7.500615758)},
    VitalSign.SUPPLEMENTAL_O2: {"L/min": Conversion("L/min")},
}

#: ACVPU (NEWS2) answers: letters, words and SNOMED CT codes -> the letter stored in value_text.
ACVPU = {
    "A": "A",
    "ALERT": "A",
    "248234008": "A",
    "C": "C",
    "CONFUSION": "C",
    "NEW CONFUSION": "C",
    "V": "V",
    "VOICE": "V",
    "300202002": "V",
    "P": "P",
    "PAIN": "P",
    "450847001": "P",
    "U": "U",
    "UNRESPONSIVE": "U",
    "422768004": "U",
}
#: On oxygen or air, for a supplemental-O2 answer given as a yes/no rather than a flow.
_YES_NO = {"Y": 1.0, "YES": 1.0, "TRUE": 1.0, "1": 1.0, "N": 0.0, "NO": 0.0, "FALSE": 0.0, "0": 0.0}

#: OBX-11 (table 0085) -> FHIR Observation.status; X is handled apart (no result).
STATUSES = {
    "F": "final",
    "C": "amended",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "": "final",
}


@dataclass
class _Group:
    patient_id: int
    encounter_id: int | None
    time: dt.datetime | None


def map_vitals(session: Session, message: Message, ctx: Context) -> None:
    rows: list[ObservationIn] = []
    counts: Counter[str] = Counter()
    unknown: list[str] = []
    group: _Group | None = None
    msh_time = parse_datetime(message.msh.get(7), "MSH-7")
    for segment in message:
        if segment.name == "PID":
            group = _Group(patient_id(session, segment, ctx), None, None)
        elif segment.name == "PV1" and group is not None:
            group.encounter_id = encounter_id(session, encounter_in(segment))
        elif segment.name == "OBR" and group is not None:
            group.time = parse_datetime(segment.get(7), "OBR-7")
        elif segment.name == "OBX":
            if group is None:
                raise MappingError(
                    "OBX before any PID", code=ErrorCode.SEGMENT_SEQUENCE_ERROR, location="PID-3"
                )
            row = _observation(segment, group, msh_time, ctx.message_id, counts, unknown)
            if row is not None:
                rows.append(row)
    if group is None:
        raise MappingError("ORU^R01 without PID", code=ErrorCode.SEGMENT_SEQUENCE_ERROR, location="PID-3")
    record_observations(session, rows)
    if unknown:
        ctx.note("unknown observation codes kept: " + ", ".join(dict.fromkeys(unknown)))
    if counts["container"]:
        ctx.note(f"{counts['container']} OBX without a value (device hierarchy) not stored")
    if counts["no_result"]:
        ctx.note(f"{counts['no_result']} OBX with status X (no result obtained) not stored")
    if counts["msh_time"]:
        ctx.note(f"{counts['msh_time']} OBX without OBX-14 or OBR-7: timed by MSH-7")


def _observation(
    obx: Segment,
    group: _Group,
    msh_time: dt.datetime | None,
    message_id: int | None,
    counts: Counter[str],
    unknown: list[str],
) -> ObservationIn | None:
    raw_value = obx.get(5)
    if not raw_value and not obx.get(5, 2):
        counts["container"] += 1
        return None
    status_code = obx.get(11).upper()
    if status_code == "X":
        counts["no_result"] += 1
        return None
    observed_at = parse_datetime(obx.get(14), "OBX-14") or group.time
    if observed_at is None:
        observed_at = msh_time
        counts["msh_time"] += 1
    if observed_at is None:
        raise MappingError(
            "observation time missing (OBX-14, OBR-7 and MSH-7 empty)",
            code=ErrorCode.REQUIRED_FIELD_MISSING,
            location="OBX-14",
        )
    concept = coded(obx, 3)
    system = SYSTEM_ALIASES.get(concept.system.upper(), concept.system)
    code = concept.code
    if system == MDC and not code.isdigit():
        code = REFIDS.get(code, REFIDS.get(concept.text, code))
    vital = CODES.get((system, code))
    if vital is None and system == MDC:
        vital = CODES.get((MDC, REFIDS.get(concept.text, "")))
    reading = _read(vital, obx) if vital is not None else None
    known = "" if reading is None or vital is None else vital.value
    if reading is None:
        why = f" (value or unit not usable as {vital.value})" if vital is not None else ""
        unknown.append(f"{system or '-'} {code}{why}")
        reading = _as_received(obx)
    value, text, unit = reading
    return ObservationIn(
        patient_id=group.patient_id,
        encounter_id=group.encounter_id,
        code=known,
        source_code=code,
        source_system=system,
        source_display=concept.text,
        value=value,
        value_text=text,
        unit=unit,
        observed_at=observed_at,
        device=obx.get(18) or obx.get(18, 3),
        status=STATUSES.get(status_code, "final"),
        message_id=message_id,
    )


def _unit(obx: Segment) -> str:
    unit = coded(obx, 6)
    if not unit.code:
        return ""
    if unit.code in MDC_UNITS:
        return MDC_UNITS[unit.code]
    if unit.code in MDC_UNIT_REFIDS:
        return MDC_UNITS[MDC_UNIT_REFIDS[unit.code]]
    return UNIT_ALIASES.get(unit.code.lower(), unit.code)


def _number(obx: Segment) -> float | None:
    """NM, or SN (comparator ^ number): the number."""
    text = obx.get(5, 2) if obx.get(2).upper() == "SN" else obx.get(5)
    try:
        return float(text)
    except ValueError:
        return None


def _read(vital: VitalSign, obx: Segment) -> tuple[float | None, str, str] | None:
    """(value, value_text, UCUM unit) for *vital*, or ``None`` when the OBX cannot be read as it."""
    if vital is VitalSign.CONSCIOUSNESS:
        letter = ACVPU.get(obx.get(5).upper()) or ACVPU.get(obx.get(5, 2).upper())
        return (None, letter, "") if letter else None
    unit = _unit(obx)
    if vital is VitalSign.SUPPLEMENTAL_O2 and not unit:
        answer = _YES_NO.get(obx.get(5).upper())
        if answer is not None:
            return answer, "", ""
    number = _number(obx)
    if number is None:
        return None
    conversions = UNITS[vital]
    canonical = next(iter(conversions.values())).unit
    conversion = conversions.get(unit or canonical)
    if conversion is None:
        return None
    return round(number * conversion.factor + conversion.offset, 4), "", conversion.unit


def _as_received(obx: Segment) -> tuple[float | None, str, str]:
    """(value, value_text, unit) of an observation we keep as received: a number when OBX-5 is
    one, else the text."""
    number = _number(obx) if obx.get(2).upper() in ("NM", "SN", "") else None
    text = "" if number is not None else (obx.get(5) or obx.get(5, 2))
    return number, text, _unit(obx)
