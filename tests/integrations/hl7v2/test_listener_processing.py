"""Processing stored messages: arrival order per sender, one unit of work each, FAILED with the
reason, replay, application acknowledgements (enhanced mode), never twice after a crash.

The mapping is part B's; here a stub stands in for it that writes a row in the processing
transaction (an outbox row naming the message), so that "processed exactly once" and "the mapping's
writes roll back with a failure" are read from the database itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.messages.models import HL7Message, MessageStatus, OutboundHL7
from clinic.messages.service import Arrival, record_arrivals, replay
from clinic.outbox.models import OutboxMessage
from clinic.outbox.service import enqueue
from integrations.hl7v2.codec import message_text
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.listener import Door
from integrations.hl7v2.processor import Processor
from integrations.hl7v2.tables import ErrorCode
from tests.integrations.hl7v2.listener_helpers import SUPPORTED, adt_a01, oru_r01

STUB_TASK = "test.hl7_processed"


class CountingStub:
    """Stands in for ``mapping.process_message``: records the order of calls and writes one outbox
    row per call in the caller's transaction; raises for control ids it is told to fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, Exception] = {}

    def __call__(self, session: Session, message: HL7Message) -> str:
        self.calls.append(message.control_id)
        enqueue(session, STUB_TASK, "test", {"message_id": message.id})
        session.flush()
        if message.control_id in self.fail:
            raise self.fail[message.control_id]
        text = message_text(message.raw, message.charset)
        return f"{len(text.split(chr(13)))} segments"


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


def _store(factory: sessionmaker[Session], *payloads: bytes) -> None:
    """Store messages the way the listener does (the door's verdict, then record_arrivals)."""
    door = Door(SUPPORTED)
    with unit_of_work(factory) as session:
        arrivals = [door.admit(p, "127.0.0.1:1").arrival for p in payloads]
        record_arrivals(session, [a for a in arrivals if isinstance(a, Arrival)])


def _stub_rows(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.task == STUB_TASK))
        return sorted(int(r.kwargs["message_id"]) for r in rows)  # type: ignore[call-overload]


def _messages(factory: sessionmaker[Session]) -> dict[str, HL7Message]:
    with factory() as session:
        return {m.control_id: m for m in session.scalars(select(HL7Message))}


def test_in_arrival_order_each_once_with_notes(factory: sessionmaker[Session]) -> None:
    sent = [adt_a01(f"A{i}", app="EMR") if i % 2 else oru_r01(f"A{i}", app="MONITOR") for i in range(30)]
    _store(factory, *sent)
    stub = CountingStub()
    done = Processor(factory, stub, batch_size=7).run_until_idle()
    assert (done.processed, done.failed) == (30, 0)
    assert stub.calls == [f"A{i}" for i in range(30)]  # id order, so each sender's order too
    messages = _messages(factory)
    assert {m.status for m in messages.values()} == {MessageStatus.PROCESSED}
    assert messages["A1"].notes == "4 segments" and messages["A1"].attempts == 1
    assert _stub_rows(factory) == sorted(m.id for m in messages.values())
    assert Processor(factory, stub).run_until_idle().total == 0  # nothing twice


def test_a_mapping_error_fails_the_message_rolls_its_writes_back_and_the_rest_go_on(
    factory: sessionmaker[Session],
) -> None:
    _store(factory, adt_a01("OK-1"), adt_a01("BAD-1"), adt_a01("BOOM-1"), adt_a01("OK-2"))
    stub = CountingStub()
    stub.fail["BAD-1"] = MappingError("no such patient", code=ErrorCode.UNKNOWN_KEY_IDENTIFIER)
    stub.fail["BOOM-1"] = KeyError("bug")
    done = Processor(factory, stub).run_until_idle()
    assert (done.processed, done.failed) == (2, 2)
    messages = _messages(factory)
    assert messages["BAD-1"].status == MessageStatus.FAILED and messages["BAD-1"].error == "no such patient"
    assert messages["BOOM-1"].status == MessageStatus.FAILED
    assert messages["BOOM-1"].error.startswith("internal error: KeyError")
    assert messages["OK-2"].status == MessageStatus.PROCESSED
    # Only the two successes left their rows: the failures' writes were rolled back.
    assert _stub_rows(factory) == sorted([messages["OK-1"].id, messages["OK-2"].id])

    with unit_of_work(factory) as session:
        replay(session, messages["BAD-1"].id)
    stub.fail.clear()
    assert Processor(factory, stub).run_until_idle().processed == 1
    again = _messages(factory)["BAD-1"]
    assert again.status == MessageStatus.PROCESSED and again.attempts == 2 and again.error == ""
    assert again.id in _stub_rows(factory)


def test_a_transient_fault_rolls_the_whole_pass_back_and_nothing_is_lost_or_doubled(
    factory: sessionmaker[Session],
) -> None:
    _store(factory, *(adt_a01(f"T{i}") for i in range(5)))
    stub = CountingStub()
    stub.fail["T3"] = OperationalError("SELECT 1", {}, Exception("database is locked"))
    with pytest.raises(OperationalError):
        Processor(factory, stub).run_once()
    assert {m.status for m in _messages(factory).values()} == {MessageStatus.RECEIVED}
    assert _stub_rows(factory) == []
    stub.fail.clear()
    assert Processor(factory, stub).run_until_idle().processed == 5
    assert len(_stub_rows(factory)) == 5


def test_rejected_messages_are_not_processed(factory: sessionmaker[Session]) -> None:
    _store(factory, adt_a01("R1", patient=""), adt_a01("R2"))
    stub = CountingStub()
    Processor(factory, stub).run_until_idle()
    assert stub.calls == ["R2"]


def test_application_acks_follow_msh16(factory: sessionmaker[Session]) -> None:
    _store(
        factory,
        adt_a01("APP-AL", accept_ack="AL", app_ack="AL"),
        adt_a01("APP-ER-OK", accept_ack="AL", app_ack="ER"),
        adt_a01("APP-ER-BAD", accept_ack="AL", app_ack="ER"),
        adt_a01("APP-AL-ROUTED", app="LIS", accept_ack="AL", app_ack="AL"),
        adt_a01("ORIGINAL"),
    )
    stub = CountingStub()
    stub.fail["APP-ER-BAD"] = MappingError("unknown ward", location="PV1-3")
    done = Processor(factory, stub, ack_destinations={"LIS": "10.0.0.9:2576"}).run_until_idle()
    assert done.application_acks == 3
    messages = _messages(factory)
    by_subject = {}
    with factory() as session:
        for row in session.scalars(select(OutboundHL7)):
            by_subject[row.subject_id] = row
    assert set(by_subject) == {messages[c].id for c in ("APP-AL", "APP-ER-BAD", "APP-AL-ROUTED")}

    held = by_subject[messages["APP-AL"].id]
    assert (
        held.status == "held" and held.destination == "" and "CLINIC_HL7_ACK_DESTINATIONS" in held.last_error
    )
    ack = parse_message(held.raw.decode())
    assert ack.msa.msa_1.to_er7() == "AA" and ack.msa.msa_2.to_er7() == "APP-AL"
    assert ack.msh.msh_10.to_er7() == held.control_id

    error_ack = parse_message(by_subject[messages["APP-ER-BAD"].id].raw.decode())
    assert error_ack.msa.msa_1.to_er7() == "AE"
    assert error_ack.err.err_2.to_er7() == "PV1^1^3" and error_ack.err.err_8.to_er7() == "unknown ward"

    routed = by_subject[messages["APP-AL-ROUTED"].id]
    assert routed.status == "pending" and routed.destination == "10.0.0.9:2576"
