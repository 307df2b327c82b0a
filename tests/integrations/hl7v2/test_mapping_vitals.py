"""ORU^R01 vital signs (IHE PCD-01 with MDC codes, an EHR flowsheet with LOINC) -> observations:
codes, UCUM units, times, devices; unknown codes kept and reported; idempotent. SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.observations.models import Observation, VitalSign
from clinic.patients.service import find_patient
from integrations.hl7v2.errors import MappingError
from tests.integrations.hl7v2.mapping_helpers import (
    process,
    sample,
)

UTC = dt.UTC
MONITOR = "0123456789ABCDEF"  # OBX-18 EUI-64 of the PCD-01 sample


def _observations(factory: sessionmaker[Session], identifier: str) -> list[Observation]:
    with unit_of_work(factory) as session:
        patient = find_patient(session, identifier, "SMARTHOSP")
        assert patient is not None
        rows = list(
            session.scalars(
                select(Observation)
                .where(Observation.patient_id == patient.id)
                .order_by(Observation.source_code)
            )
        )
        session.expunge_all()
        return rows


def _by_source(rows: list[Observation]) -> dict[str, Observation]:
    return {r.source_code: r for r in rows}


def test_pcd01_mdc_vitals_unknown_codes_kept_and_idempotent(session_factory: sessionmaker[Session]) -> None:
    process(session_factory, sample("adt_a01_admit.hl7"))
    notes = process(session_factory, sample("oru_r01_pcd01_mdc.hl7"))
    assert "unknown observation codes kept: MDC 150023, MDC 150320" in notes
    assert "1 OBX without a value (device hierarchy) not stored" in notes

    rows = _observations(session_factory, "8007421")
    assert len(rows) == 10
    got = {code: (r.code, r.value, r.unit) for code, r in _by_source(rows).items()}
    assert got == {
        "147842": (VitalSign.HEART_RATE, 112.0, "/min"),
        "149530": (VitalSign.HEART_RATE, 111.0, "/min"),
        "150456": (VitalSign.SPO2, 91.0, "%"),
        "151562": (VitalSign.RESPIRATORY_RATE, 24.0, "/min"),
        "151578": (VitalSign.RESPIRATORY_RATE, 25.0, "/min"),
        "150364": (VitalSign.TEMPERATURE, 38.6, "Cel"),
        "150021": (VitalSign.SYSTOLIC_BP, 98.0, "mm[Hg]"),
        "150022": (VitalSign.DIASTOLIC_BP, 61.0, "mm[Hg]"),
        "150023": ("", 73.0, "mm[Hg]"),  # NIBP mean: not a NEWS2 parameter, kept as received
        "150320": ("", 87.0, "%"),  # signal quality: unknown, kept as received
    }
    temperature = _by_source(rows)["150364"]
    assert temperature.observed_at == dt.datetime(2026, 11, 21, 23, 29, tzinfo=UTC)  # its own OBX-14
    assert (temperature.source_system, temperature.source_display) == ("MDC", "MDC_TEMP_BODY")
    assert {r.device for r in rows} == {MONITOR}
    assert {r.status for r in rows} == {"preliminary"}  # OBX-11 R
    assert all(r.encounter_id is not None and r.message_id is not None for r in rows)

    # the gateway re-sends the message under a new control id: nothing doubles
    process(session_factory, sample("oru_r01_pcd01_mdc.hl7", PCD0001842="PCD0001843"))
    assert len(_observations(session_factory, "8007421")) == 10
    # a corrected SpO2 (OBX-11 C) replaces the value under the same key
    corrected = sample(
        "oru_r01_pcd01_mdc.hl7", **{"|1.2.1.1|91|": "|1.2.1.1|94|", "|90-100||||R|": "|90-100||||C|"}
    )
    process(session_factory, corrected)
    rows = _observations(session_factory, "8007421")
    assert len(rows) == 10
    assert (_by_source(rows)["150456"].value, _by_source(rows)["150456"].status) == (94.0, "amended")


def test_loinc_flowsheet_with_conversions(sqlite_factory: sessionmaker[Session]) -> None:
    notes = process(sqlite_factory, sample("oru_r01_loinc.hl7"))
    assert notes == "unknown observation codes kept: LN 8302-2"
    rows = _observations(sqlite_factory, "5512093")
    assert len(rows) == 10
    by_code: dict[str, list[Observation]] = {}
    for row in rows:
        by_code.setdefault(row.code, []).append(row)
    (temperature,) = by_code[VitalSign.TEMPERATURE]
    assert (temperature.value, temperature.unit) == (pytest.approx(38.5), "Cel")  # 101.3 [degF]
    (systolic,) = by_code[VitalSign.SYSTOLIC_BP]
    assert (systolic.value, systolic.unit) == (pytest.approx(111.0, abs=0.1), "mm[Hg]")  # 14.8 kPa
    (oxygen,) = by_code[VitalSign.SUPPLEMENTAL_O2]
    assert (oxygen.value, oxygen.unit) == (2.0, "L/min")
    (consciousness,) = by_code[VitalSign.CONSCIOUSNESS]
    assert (consciousness.value, consciousness.value_text) == (None, "V")
    (height,) = by_code[""]
    assert (height.source_system, height.source_code, height.value, height.unit) == (
        "LN",
        "8302-2",
        172.0,
        "cm",
    )
    heart = sorted(by_code[VitalSign.HEART_RATE], key=lambda r: r.observed_at)
    # OBX 10 has no OBX-14: it takes OBR-7 (11:58 +0900)
    assert [(r.value, r.observed_at) for r in heart] == [
        (88.0, dt.datetime(2026, 11, 22, 2, 58, tzinfo=UTC)),
        (96.0, dt.datetime(2026, 11, 22, 3, 0, tzinfo=UTC)),
    ]
    assert {r.status for r in rows} == {"final"} and {r.device for r in rows} == {""}


def test_a_known_code_with_an_unusable_unit_is_kept_uncoded(sqlite_factory: sessionmaker[Session]) -> None:
    raw = sample("oru_r01_loinc.hl7", **{"|93|%^percent^UCUM|": "|93|mm[Hg]^millimeter of mercury^UCUM|"})
    notes = process(sqlite_factory, raw)
    assert "LN 59408-5 (value or unit not usable as spo2)" in notes
    (spo2,) = [r for r in _observations(sqlite_factory, "5512093") if r.source_code == "59408-5"]
    assert (spo2.code, spo2.value, spo2.unit) == ("", 93.0, "mm[Hg]")


def test_times_fall_back_to_msh7_and_say_so(sqlite_factory: sessionmaker[Session]) -> None:
    raw = sample("oru_r01_loinc.hl7", **{"|20261122115800+0900": "|", "||||F|||20261122120000+0900": "||||F"})
    notes = process(sqlite_factory, raw)
    assert "10 OBX without OBX-14 or OBR-7: timed by MSH-7" in notes
    assert {r.observed_at for r in _observations(sqlite_factory, "5512093")} == {
        dt.datetime(2026, 11, 22, 3, 5, 2, tzinfo=UTC)
    }


def test_an_oru_without_a_patient_is_refused(sqlite_factory: sessionmaker[Session]) -> None:
    with pytest.raises(MappingError) as caught:
        process(sqlite_factory, sample("oru_r01_loinc.hl7", PID="ZPI"))
    assert caught.value.location == "PID-3"


def test_times_without_an_offset_are_the_senders_local_time(session_factory: sessionmaker[Session]) -> None:
    """A feed that sends local time without an offset (common) is read in ``hl7_timezone``, not in
    the server's zone (often UTC in a container). The zone is one whose offset differs from this
    machine's on that day, so that reading in the server's zone would give another instant."""
    from zoneinfo import ZoneInfo

    from integrations.hl7v2.processor import Processor, load_mapping
    from tests.integrations.hl7v2.mapping_helpers import store

    taken = dt.datetime(2026, 11, 22, 8, 29)  # the temperature's OBX-14, offset removed
    zone = next(
        name
        for name in ("Asia/Seoul", "America/New_York")
        if taken.replace(tzinfo=ZoneInfo(name)).utcoffset() != taken.astimezone().utcoffset()
    )
    mrn = "77" + str(abs(hash(session_factory)))[:8]
    with unit_of_work(session_factory) as session:
        for raw in (sample("adt_a01_admit.hl7", **{"8007421": mrn}), sample("oru_r01_pcd01_mdc.hl7")):
            store(session, raw.replace(b"8007421", mrn.encode()).replace(b"+0900", b""))
    done = Processor(session_factory, load_mapping(), timezone=zone).run_until_idle()
    assert (done.processed, done.failed) == (2, 0)
    temperature = _by_source(_observations(session_factory, mrn))["150364"]
    assert temperature.observed_at == taken.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
    assert temperature.observed_at != taken.astimezone().astimezone(UTC)  # not the server's zone
    with pytest.raises(ValueError, match="unknown time zone"):
        Processor(session_factory, load_mapping(), timezone="Mars/Base")
