"""Store, then acknowledge, through SIGKILL: 10,000 HL7 messages stream in from 8 clients while the
MLLP listener (``clinic serve mllp``, the process ``clinic up`` runs) and the processor are killed
with SIGKILL and restarted.

* Every message acknowledged before the kill is in the store when the listener is dead.
* Clients re-send what was not acknowledged; a message stored but not acknowledged is answered from
  the store (a repeat) and not stored twice: at the end exactly 10,000 rows.
* Processing resumes after the processor's restart; each message is processed exactly once: the
  counting stand-in for the mapping writes one outbox row per call in the processing transaction,
  and ``attempts`` is 1 everywhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory
from clinic.messages.models import HL7Message, MessageStatus
from clinic.outbox.models import OutboxMessage
from tests.conftest import REPO_ROOT, free_port
from tests.integrations.hl7v2.listener_helpers import (
    COUNTED_TASK,
    RawClient,
    adt_a01,
    msa_fast,
    orm_o01,
    oru_r01,
)

TOTAL = 10_000
CLIENTS = 8
KILL_AT = 3_000  # acknowledged messages before the listener is killed

PROCESSOR = """
import signal, threading
from clinic.settings import load_settings
from integrations.hl7v2.processor import run_processor
from tests.integrations.hl7v2.listener_helpers import counting_process
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
run_processor(load_settings(), stop, process=counting_process)
"""


class Component:
    """A child process, restartable, killed with SIGKILL on demand."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO_ROOT, stdout=out, stderr=out)

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.argv} died early"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def _messages(client: int) -> list[tuple[str, bytes]]:
    """This client's share: ADT, ORM and ORU from its own sending application."""
    builders = (adt_a01, orm_o01, oru_r01)
    out = []
    for i in range(client, TOTAL, CLIENTS):
        control_id = f"K{client}-{i}"
        out.append((control_id, builders[i % 3](control_id, app=f"FEED{client}", patient=f"P{i % 50}")))
    return out


class Sender(threading.Thread):
    """Sends its messages in order; on any connection fault reconnects and sends the unacknowledged
    message again (what a real MLLP sender does)."""

    def __init__(
        self, client: int, port: int, acked: set[str], lock: threading.Lock, deadline: float
    ) -> None:
        super().__init__(daemon=True)
        self.client, self.port, self.acked, self.lock, self.deadline = client, port, acked, lock, deadline
        self.resent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        connection: RawClient | None = None
        for control_id, payload in _messages(self.client):
            tries = 0
            while True:
                if time.monotonic() > self.deadline:
                    raise TimeoutError("senders ran out of time")
                try:
                    if connection is None:
                        connection = RawClient(self.port, timeout=10)
                    code, acked_id = msa_fast(connection.send(payload))
                    break
                except OSError:
                    if connection is not None:
                        connection.close()
                    connection = None
                    tries += 1
                    time.sleep(0.05)
            assert (code, acked_id) == ("AA", control_id), (code, acked_id, control_id)
            self.resent += 1 if tries else 0
            with self.lock:
                self.acked.add(control_id)
        if connection is not None:
            connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        from clinic.migrate import upgrade

        url = f"sqlite:///{tmp_path / 'clinic.db'}"
        upgrade(url)
        yield url
    else:
        yield str(request.getfixturevalue("pg_database"))


def _count(factory: sessionmaker[Session], *where: ColumnElement[bool]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(HL7Message).where(*where)) or 0)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_while_messages_stream_in(database: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CLINIC_DATA_DIR": str(tmp_path),
        "CLINIC_DATABASE_URL": database,
        "CLINIC_ENVIRONMENT": "test",
        "CLINIC_MLLP_HOST": "127.0.0.1",
        "CLINIC_MLLP_PORT": str(port),
        "PYTHONPATH": str(REPO_ROOT),
    }
    listener = Component(
        [sys.executable, "-m", "clinicctl.main", "serve", "mllp"], env, tmp_path / "mllp.log"
    )
    processor = Component([sys.executable, "-c", PROCESSOR], env, tmp_path / "processor.log")
    engine = make_engine(database)
    factory = make_session_factory(engine)
    acked: set[str] = set()
    lock = threading.Lock()
    started = time.monotonic()
    listener.start()
    processor.start()
    try:
        _wait_port(port)
        senders = [Sender(n, port, acked, lock, started + 90) for n in range(CLIENTS)]
        for sender in senders:
            sender.start()
        while len(acked) < KILL_AT:
            assert all(s.is_alive() or s.error is None for s in senders), [s.error for s in senders]
            time.sleep(0.01)
        listener.kill()
        processor.kill()
        with lock:
            acked_before_kill = set(acked)
        with factory() as session:
            stored = set(session.scalars(select(HL7Message.control_id)))
        assert acked_before_kill <= stored, f"{len(acked_before_kill - stored)} acknowledged but not stored"
        processed_at_kill = _count(factory, HL7Message.status == MessageStatus.PROCESSED)

        listener.start()
        processor.start()
        for sender in senders:
            sender.join(90)
            assert sender.error is None, sender.error
        assert len(acked) == TOTAL
        assert sum(s.resent for s in senders) >= 1  # some message was in flight at the kill

        deadline = time.monotonic() + 60
        while _count(factory, HL7Message.status == MessageStatus.RECEIVED) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        listener.stop()
        processor.stop()
    with factory() as session:
        assert _count(factory) == TOTAL  # no message stored twice
        statuses = dict(
            session.execute(select(HL7Message.status, func.count()).group_by(HL7Message.status)).all()
        )
        assert statuses == {MessageStatus.PROCESSED: TOTAL}, statuses
        assert session.scalar(select(func.max(HL7Message.attempts))) == 1
        counted = session.execute(
            select(
                func.count(), func.count(func.distinct(OutboxMessage.kwargs["message_id"].as_integer()))
            ).where(OutboxMessage.task == COUNTED_TASK)
        ).one()
    engine.dispose()
    assert tuple(counted) == (TOTAL, TOTAL)  # processed exactly once each
    assert processed_at_kill < TOTAL  # processing resumed after the restart
    print(f"\n{TOTAL} messages, {CLIENTS} clients, {time.monotonic() - started:.1f} s; "
          f"killed at {len(acked_before_kill)} acknowledged, {processed_at_kill} processed")  # fmt: skip
