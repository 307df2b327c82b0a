"""ORU^R01 (HL7 v2.5.1 §7.3.1, "unsolicited transmission of an observation") carrying an AI read.

Built with hl7apy's typed structure (``ORU_R01`` of v2.5.1, strict validation: a field we put in
the wrong place raises here, not at the receiver), then written as ER7 in UTF-8 (MSH-18
``UNICODE UTF-8``: patient names may be Hangul). One message per read:

* MSH: sending application ``CLINIC``, MSH-10 our control id (the ACK's MSA-2 must echo it).
* PID: PID-3 the patient's identifier with its assigning authority (type MR), PID-5/7/8.
* ORC + OBR when the study has an order: ORC-1 ``RE`` (observations to follow), placer/filler
  numbers, OBR-4 the ordered procedure; without one OBR-4 is LOINC 18748-4 "Diagnostic imaging
  study" and OBR-3 (filler) our read id. OBR-18 the accession number (IHE placer field 1), OBR-7
  the time of the read, OBR-25 result status ``P`` (an AI read nobody has reviewed is preliminary;
  ``F`` once signed).
* NTE after OBR: the model's disclaimer (e.g. "synthetic demo model — not for clinical use").
* OBX ST: DCM 111001 Algorithm Name, DCM 111003 Algorithm Version, DCM 110180 Study Instance UID
  (codes of DICOM PS3.16, as the TID 1500 SR uses them).
* OBX NM per finding: OBX-3 the finding (code ^ label ^ ``99CLINICAI``, a local coding system,
  HL7 table 0396 "99zzz"), OBX-5 its probability, OBX-6 UCUM ``1``, OBX-7 the model's threshold as
  the normal range (``<0.5``), OBX-8 ``A`` (abnormal) when positive, else ``N``; OBX-11 as OBR-25;
  OBX-18 the model (EI: "id version" ^ CLINIC). A disclaimer is repeated in an NTE after each finding, so
  that a receiver that shows observations one by one still shows it with every result.
"""

from __future__ import annotations

import datetime as dt

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message

from clinic.messages.outbound import AIReadResult, FindingResult
from integrations.hl7v2.ack import escape, hl7_timestamp

VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
SENDING_APPLICATION = "CLINIC"
CHARSET = "UNICODE UTF-8"
#: HL7 table 0396 local coding system of our findings' codes.
FINDING_SYSTEM = "99CLINICAI"
#: LOINC 18748-4 "Diagnostic imaging study", OBR-4 when no order names the procedure.
IMAGING_STUDY = ("18748-4", "Diagnostic imaging study", "LN")
ALGORITHM_NAME = ("111001", "Algorithm Name", "DCM")
ALGORITHM_VERSION = ("111003", "Algorithm Version", "DCM")
STUDY_INSTANCE_UID = ("110180", "Study Instance UID", "DCM")


def _cwe(code: str, text: str, system: str) -> str:
    return "^".join((escape(code), escape(text), escape(system)))


def _xpn(person_name: str) -> str:
    """A DICOM PN (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) as XPN (family ^ given ^ middle ^ suffix ^
    prefix ^ degree ^ type L)."""
    parts = [p for p in person_name.split("=")[0].split("^")] + [""] * 5
    family, given, middle, prefix, suffix = (escape(p) for p in parts[:5])
    if not any((family, given, middle, prefix, suffix)):
        return ""
    return "^".join((family, given, middle, suffix, prefix, "", "L"))


def _number(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def build_ai_result(
    result: AIReadResult,
    *,
    control_id: str,
    final: bool = False,
    now: dt.datetime | None = None,
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
) -> bytes:
    """The ORU^R01 of *result*, as UTF-8 ER7 bytes with CR segment terminators."""
    status = "F" if final else "P"
    message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    msh.msh_3 = SENDING_APPLICATION
    if sending_facility:
        msh.msh_4 = escape(sending_facility)
    if receiving_application:
        msh.msh_5 = escape(receiving_application)
    if receiving_facility:
        msh.msh_6 = escape(receiving_facility)
    msh.msh_7 = hl7_timestamp(now)
    msh.msh_9 = MESSAGE_TYPE
    msh.msh_10 = escape(control_id)
    msh.msh_11 = "P"
    msh.msh_18 = CHARSET
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    _pid(patient_result.add_group("ORU_R01_PATIENT"), result)
    group = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    _orc_obr(group, result, status)
    if result.disclaimer:
        _nte(group, result.disclaimer)
    observations = [
        ("ST", ALGORITHM_NAME, escape(result.model_name)),
        ("ST", ALGORITHM_VERSION, escape(result.model_version)),
        ("ST", STUDY_INSTANCE_UID, escape(result.study_uid)),
    ]
    set_id = 0
    for value_type, concept, value in observations:
        set_id += 1
        obx = group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1 = str(set_id)
        obx.obx_2 = value_type
        obx.obx_3 = _cwe(*concept)
        obx.obx_5 = value
        obx.obx_11 = status
    for finding in result.findings:
        set_id += 1
        observation = group.add_group("ORU_R01_OBSERVATION")
        _finding(observation, set_id, finding, result, status)
        if result.disclaimer:
            _nte(observation, result.disclaimer)
    text = message.to_er7()
    return (text + "\r").encode("utf-8")


def _pid(patient: Group, result: AIReadResult) -> None:
    pid = patient.add_segment("PID")
    pid.pid_1 = "1"
    pid.pid_3 = f"{escape(result.patient_identifier)}^^^{escape(result.patient_issuer)}^MR"
    name = _xpn(result.patient_name)
    if name:
        pid.pid_5 = name
    if result.patient_birth_date:
        pid.pid_7 = result.patient_birth_date.strftime("%Y%m%d")
    if result.patient_sex:
        pid.pid_8 = escape(result.patient_sex[:1])


def _orc_obr(group: Group, result: AIReadResult, status: str) -> None:
    placer = (
        f"{escape(result.placer_order_number)}^{escape(result.placer_issuer)}"
        if result.placer_order_number
        else ""
    )
    filler = (
        escape(result.filler_order_number)
        if result.filler_order_number
        else f"AIREAD-{result.read_id}^CLINIC"
    )
    if result.placer_order_number:
        orc = group.add_segment("ORC")
        orc.orc_1 = "RE"
        orc.orc_2 = placer
        orc.orc_3 = filler
    obr = group.add_segment("OBR")
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    if result.procedure_code:
        obr.obr_4 = _cwe(result.procedure_code, result.procedure_text, result.procedure_system)
    else:
        obr.obr_4 = _cwe(*IMAGING_STUDY)
    obr.obr_7 = hl7_timestamp(result.read_at)
    if result.accession_number:
        obr.obr_18 = escape(result.accession_number)
    obr.obr_22 = hl7_timestamp(result.read_at)
    obr.obr_25 = status


def _nte(group: Group, text: str) -> None:
    nte = group.add_segment("NTE")
    nte.nte_1 = "1"
    nte.nte_3 = escape(text)
    nte.nte_4 = "RE^Remark^HL70364"


def _finding(
    observation: Group, set_id: int, finding: FindingResult, result: AIReadResult, status: str
) -> None:
    obx = observation.add_segment("OBX")
    obx.obx_1 = str(set_id)
    obx.obx_2 = "NM"
    obx.obx_3 = _cwe(finding.code, finding.label, FINDING_SYSTEM)
    obx.obx_5 = _number(finding.probability)
    obx.obx_6 = "1^^UCUM"
    obx.obx_7 = f"<{_number(finding.threshold)}"
    obx.obx_8 = "A" if finding.positive else "N"
    obx.obx_11 = status
    obx.obx_14 = hl7_timestamp(result.read_at)
    obx.obx_18 = f"{escape(result.model_id)} {escape(result.model_version)}^{SENDING_APPLICATION}"
