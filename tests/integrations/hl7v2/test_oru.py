"""Outbound ORU^R01 of AI reads: every message we build parses back with hl7apy (strict), python-hl7
and our reader; delivery to an MLLP server that is not ours (python-hl7's asyncio ``hl7.mllp``
server playing the EMR) with AA, AE, AR, a foreign ACK, and the destination down then back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import SYNTHETIC_DISCLAIMER
from clinic.ai.service import FindingIn, ReadIn, record_read
from clinic.db import unit_of_work, utcnow
from clinic.messages.models import OutboundHL7
from clinic.messages.outbound import (
    AIReadResult,
    FindingResult,
    OutboundStatus,
    ai_read_result,
    attempts_of,
    dispatch_due,
    new_control_id,
    queue_message,
)
from clinic.outbox.models import OutboxMessage
from clinic.settings import Environment, ResultsTrigger, Settings
from integrations.hl7v2.mapping.parse import Message
from integrations.hl7v2.oru import build_ai_result
from tests.conftest import free_port
from tests.integrations.hl7v2.mapping_helpers import (
    process,
    record_study,
    sample,
)
from tests.integrations.hl7v2.peer_emr import PeerEMR
from worker.hl7_tasks import deliver_outbound, queue_ai_result
from worker.tasks import WorkerContext

READ_AT = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
RESULT = AIReadResult(
    read_id=7,
    read_at=READ_AT,
    model_id="demo-cxr",
    model_name="Demo CXR DenseNet121",
    model_version="0.3.1",
    is_synthetic=True,
    disclaimer=SYNTHETIC_DISCLAIMER,
    findings=(
        FindingResult("consolidation", "Consolidation", 0.873, 0.5, True),
        FindingResult("nodule_mass", "Nodule/mass ^ & | ~ \\", 0.12, 0.35, False),
    ),
    study_uid="1.2.410.200010.20261122.7730012",
    accession_number="ACC-7730012",
    patient_identifier="8007421",
    patient_issuer="SMARTHOSP",
    patient_name="이^민지",
    patient_birth_date=dt.date(1990, 3, 12),
    patient_sex="F",
    placer_order_number="PO-20261122-0017",
    placer_issuer="OCS",
    procedure_code="36643-5",
    procedure_text="XR Chest 2 Views",
    procedure_system="LN",
)


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_order", [True, False])
def test_every_oru_we_build_parses_back_with_three_parsers(with_order: bool) -> None:
    result = RESULT if with_order else dataclasses.replace(RESULT, placer_order_number="", procedure_code="")
    raw = build_ai_result(result, control_id="C0FFEE0001", now=READ_AT)
    text = raw.decode("utf-8")

    strict = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    strict.validate()
    order = strict.oru_r01_patient_result.oru_r01_order_observation
    assert strict.msh.msh_10.to_er7() == "C0FFEE0001" and strict.msh.msh_18.to_er7() == "UNICODE UTF-8"
    assert order.obr.obr_25.to_er7() == "P"  # an unreviewed AI read is preliminary
    assert len(order.oru_r01_observation) == 5  # algorithm name, version, study UID, two findings

    theirs = hl7.parse(text)
    pid, obr = theirs.segment("PID"), theirs.segment("OBR")
    assert str(pid[3]) == "8007421^^^SMARTHOSP^MR" and str(pid[5]) == "이^민지^^^^^L"
    assert str(obr[18]) == "ACC-7730012"
    if with_order:
        assert str(theirs.segment("ORC")[1]) == "RE" and str(obr[2]) == "PO-20261122-0017^OCS"
        assert str(obr[4]) == "36643-5^XR Chest 2 Views^LN"
    else:
        assert not [s for s in theirs if str(s[0]) == "ORC"]
        assert str(obr[4]) == "18748-4^Diagnostic imaging study^LN" and str(obr[3]) == "AIREAD-7^CLINIC"
    notes = [theirs.unescape(str(s[3])) for s in theirs.segments("NTE")]
    assert notes == [SYNTHETIC_DISCLAIMER] * 3  # after OBR and with each finding

    ours = Message(text, "utf-8")
    values = {(o.get(3), o.get(3, 3)): (o.get(2), o.get(5), o.get(7), o.get(8)) for o in ours.all("OBX")}
    assert values[("111001", "DCM")] == ("ST", "Demo CXR DenseNet121", "", "")
    assert values[("111003", "DCM")] == ("ST", "0.3.1", "", "")
    assert values[("110180", "DCM")] == ("ST", RESULT.study_uid, "", "")
    assert values[("consolidation", "99CLINICAI")] == ("NM", "0.873", "<0.5", "A")
    assert values[("nodule_mass", "99CLINICAI")] == ("NM", "0.12", "<0.35", "N")
    (nodule,) = [o for o in ours.all("OBX") if o.get(3) == "nodule_mass"]
    assert nodule.get(3, 2) == "Nodule/mass ^ & | ~ \\"  # escaped on the way out, intact on the way in


def test_a_signed_result_is_final_and_a_real_model_has_no_disclaimer() -> None:
    result = dataclasses.replace(RESULT, is_synthetic=False, disclaimer="")
    text = build_ai_result(result, control_id="C2", final=True).decode()
    theirs = hl7.parse(text)
    assert str(theirs.segment("OBR")[25]) == "F" and not [s for s in theirs if str(s[0]) == "NTE"]
    assert {str(s[11]) for s in theirs.segments("OBX")} == {"F"}
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


# --- delivery to the EMR: python-hl7's asyncio MLLP server ----------------------------------------


@pytest.fixture
def emr_port() -> int:
    return free_port()


@pytest.fixture
def emr(emr_port: int) -> Iterator[PeerEMR]:
    peer = PeerEMR(emr_port).start()
    yield peer
    peer.stop()


def _settings(data_dir: Path, database_url: str, port: int, **overrides: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        environment=Environment.TEST,
        hl7_results_destination=f"127.0.0.1:{port}",
        delivery_backoff_seconds=2.0,
        **overrides,  # type: ignore[arg-type]
    )


def _ai_read(factory: sessionmaker[Session], *, with_order: bool) -> int:
    """A study of patient 8007421 (with its order when asked) and one synthetic AI read of it."""
    if with_order:
        process(factory, sample("orm_o01_cxr.hl7"))
    study_id = record_study(factory, patient="8007421", issuer="SMARTHOSP", accession="ACC-7730012")
    read = ReadIn(
        model_id="demo-cxr",
        model_name="Demo CXR DenseNet121",
        model_version="0.3.1",
        sop_instance_uid="1.2.3",
        is_synthetic=True,
        disclaimer=SYNTHETIC_DISCLAIMER,
        findings=(FindingIn("consolidation", "Consolidation", 0.91, 0.5, 2),),
    )
    with unit_of_work(factory) as session:
        return record_read(session, study_id, None, read).id


def _queue(factory: sessionmaker[Session], settings: Settings, read_id: int) -> OutboundHL7 | None:
    """What analyse_study's final unit of work does for each read it records."""
    with unit_of_work(factory) as session:
        row = queue_ai_result(session, settings, read_id)
        if row is not None:
            session.flush()
            session.expunge(row)
        return row


def _row(factory: sessionmaker[Session], outbound_id: int) -> OutboundHL7:
    with unit_of_work(factory) as session:
        row = session.get(OutboundHL7, outbound_id)
        assert row is not None
        session.expunge(row)
        return row


def test_an_ai_read_goes_to_the_emr_with_its_order(
    session_factory: sessionmaker[Session], db_url: str, data_dir: Path, emr: PeerEMR
) -> None:
    settings = _settings(data_dir, db_url, emr.port)
    read_id = _ai_read(session_factory, with_order=True)
    row = _queue(session_factory, settings, read_id)
    assert row is not None and row.status == OutboundStatus.PENDING and row.subject_id == read_id
    assert row.raw == b""  # built by the delivery task, outside the read's transaction
    with unit_of_work(session_factory) as session:  # its delivery task was written with it
        (task,) = session.scalars(
            select(OutboxMessage).where(OutboxMessage.task == "clinic.hl7_deliver")
        ).all()
        assert (task.queue, task.kwargs) == ("outbound", {"outbound_id": row.id, "token": 0})
        assert ai_read_result(session, read_id).placer_order_number == "PO-20261122-0017"
    assert _queue(session_factory, settings, read_id).id == row.id  # type: ignore[union-attr]  # once per read

    assert deliver_outbound(WorkerContext(settings), row.id, token=0) == "success"
    sent = _row(session_factory, row.id)
    assert (sent.status, sent.ack_code, sent.attempts) == (OutboundStatus.SENT, "AA", 1)
    (received,) = emr.received
    theirs = hl7.parse(received)
    assert str(theirs.segment("MSH")[10]) == sent.control_id
    assert hl7.parse(sent.raw.decode()).segment("MSH")[10] == theirs.segment("MSH")[10]  # kept
    assert (
        str(theirs.segment("OBR")[2]) == "PO-20261122-0017^OCS"
        and str(theirs.segment("OBR")[18]) == "ACC-7730012"
    )
    with unit_of_work(session_factory) as session:
        assert [(a.outcome, a.ack_code) for a in attempts_of(session, row.id)] == [("success", "AA")]
    assert deliver_outbound(WorkerContext(settings), row.id, token=0) == "skipped"  # a duplicate task
    assert len(emr.received) == 1


def test_destination_down_is_retried_after_a_backoff(
    sqlite_factory: sessionmaker[Session], settings: Settings, emr_port: int
) -> None:
    config = _settings(settings.data_dir, settings.resolved_database_url, emr_port)
    row = _queue(sqlite_factory, config, _ai_read(sqlite_factory, with_order=False))
    assert row is not None
    context = WorkerContext(config)
    assert deliver_outbound(context, row.id, token=0) == "transient"  # nobody listens on the port
    waiting = _row(sqlite_factory, row.id)
    assert waiting.status == OutboundStatus.PENDING and "ConnectionRefusedError" in waiting.last_error
    built = waiting.raw  # built on the first attempt and kept: the retry sends the same bytes
    assert built.startswith(b"MSH|") and waiting.control_id.encode() in built
    backoff = (waiting.next_attempt_at - utcnow()).total_seconds()
    assert 0.5 < backoff <= 2.0  # delivery_backoff_seconds
    with unit_of_work(sqlite_factory) as session:
        assert dispatch_due(session) == []  # not due yet

    peer = PeerEMR(emr_port).start()
    try:
        with unit_of_work(sqlite_factory) as session:  # the relay's sweep, once the backoff is over
            assert dispatch_due(session, now=utcnow() + dt.timedelta(seconds=3)) == [row.id]
            task = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()
            assert task is not None and task.kwargs == {"outbound_id": row.id, "token": 1}
        assert deliver_outbound(context, row.id, token=0) == "skipped"  # the first task's token is stale
        assert deliver_outbound(context, row.id, token=1) == "success"
    finally:
        peer.stop()
    done = _row(sqlite_factory, row.id)
    assert (done.status, done.attempts, done.raw) == (OutboundStatus.SENT, 2, built)
    with unit_of_work(sqlite_factory) as session:
        assert [a.outcome for a in attempts_of(session, row.id)] == ["transient", "success"]
    assert len(peer.received) == 1


def test_a_message_that_cannot_be_built_fails_for_good_with_its_reason(
    sqlite_factory: sessionmaker[Session], settings: Settings, emr: PeerEMR
) -> None:
    config = _settings(settings.data_dir, settings.resolved_database_url, emr.port)
    with unit_of_work(sqlite_factory) as session:
        row = queue_message(
            session,
            destination=f"127.0.0.1:{emr.port}",
            control_id=new_control_id(),
            message_type="ORU^R01^ORU_R01",
            raw=b"",
            subject_kind="report",
            subject_id=None,
        )
        outbound_id = row.id
    assert deliver_outbound(WorkerContext(config), outbound_id, token=0) == "permanent"
    failed = _row(sqlite_factory, outbound_id)
    assert failed.status == OutboundStatus.FAILED and failed.last_error.startswith("not built:")
    assert emr.received == []


@pytest.mark.parametrize("answer", ["AE", "AR"])
def test_a_refusal_fails_for_good_and_is_listed(
    sqlite_factory: sessionmaker[Session], settings: Settings, emr: PeerEMR, answer: str
) -> None:
    emr.answer = answer
    config = _settings(settings.data_dir, settings.resolved_database_url, emr.port)
    row = _queue(sqlite_factory, config, _ai_read(sqlite_factory, with_order=False))
    assert row is not None
    assert deliver_outbound(WorkerContext(config), row.id, token=0) == "permanent"
    failed = _row(sqlite_factory, row.id)
    assert (failed.status, failed.ack_code) == (OutboundStatus.FAILED, answer)
    assert failed.last_error == f"{answer}: PID-3 unknown patient"
    with unit_of_work(sqlite_factory) as session:
        assert dispatch_due(session, now=utcnow() + dt.timedelta(days=1)) == []  # never again
    if answer == "AE":  # the CLI, as an engineer runs it
        env = {
            **os.environ,
            "CLINIC_DATA_DIR": str(settings.data_dir),
            "CLINIC_ENVIRONMENT": "test",
            "COLUMNS": "250",
        }
        clinic = str(Path(sys.executable).parent / "clinic")
        listed = subprocess.run(
            [clinic, "hl7", "outbound", "--status", "failed"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listed.returncode == 0, listed.stderr
        assert f"ai_read {row.subject_id}" in listed.stdout and "PID-3 unknown patient" in listed.stdout


def test_an_ack_for_another_message_is_not_taken(
    sqlite_factory: sessionmaker[Session], settings: Settings, emr: PeerEMR
) -> None:
    emr.answer = "FOREIGN"
    config = _settings(settings.data_dir, settings.resolved_database_url, emr.port)
    row = _queue(sqlite_factory, config, _ai_read(sqlite_factory, with_order=False))
    assert row is not None
    assert deliver_outbound(WorkerContext(config), row.id, token=0) == "transient"
    waiting = _row(sqlite_factory, row.id)
    assert waiting.status == OutboundStatus.PENDING and "does not acknowledge" in waiting.last_error


@pytest.mark.parametrize(
    "overrides", [{"hl7_results_destination": ""}, {"hl7_results_trigger": ResultsTrigger.SIGNED}]
)
def test_nothing_is_queued_unless_configured_for_ai_reads(
    sqlite_factory: sessionmaker[Session], settings: Settings, overrides: dict[str, object]
) -> None:
    config = Settings(
        data_dir=settings.data_dir,
        environment=Environment.TEST,
        **{"hl7_results_destination": "127.0.0.1:2575", **overrides},  # type: ignore[arg-type]
    )
    assert _queue(sqlite_factory, config, _ai_read(sqlite_factory, with_order=False)) is None


def test_application_acks_queued_by_the_processor_are_sent_without_waiting(
    sqlite_factory: sessionmaker[Session], settings: Settings, emr: PeerEMR
) -> None:
    ack = (
        b"MSH|^~\\&|CLINIC|SMARTHOSP|EMR|SMARTHOSP|20261122120000+0000||ACK^A01^ACK|ACK42|P|2.5.1\r"
        b"MSA|AA|ADT0000101\r"
    )
    with unit_of_work(sqlite_factory) as session:  # as clinic.messages.service.queue_application_ack does
        row = OutboundHL7(
            destination=f"127.0.0.1:{emr.port}",
            control_id="ACK42",
            message_type="ACK^A01^ACK",
            subject_kind="hl7_message",
            raw=ack,
            status="pending",
        )
        session.add(row)
        session.flush()
        outbound_id = row.id
    with unit_of_work(sqlite_factory) as session:  # no task was written with it: the sweep finds it
        assert dispatch_due(session) == [outbound_id]
    config = Settings(data_dir=settings.data_dir, environment=Environment.TEST)
    assert deliver_outbound(WorkerContext(config), outbound_id, token=0) == "success"
    assert _row(sqlite_factory, outbound_id).status == OutboundStatus.SENT
    deadline = utcnow() + dt.timedelta(seconds=10)
    while not emr.received and utcnow() < deadline:
        time.sleep(0.01)
    assert [hl7.parse(m).segment("MSA")[2][0] for m in emr.received] == ["ADT0000101"]
