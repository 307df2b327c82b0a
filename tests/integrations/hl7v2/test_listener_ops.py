"""Operating the HL7 feed: ``clinic hl7 send | messages | replay`` (real subprocesses against a
running listener) and the admin API (``/api/admin/hl7/messages``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.audit.models import AuditEvent
from clinic.auth.models import Role
from clinic.auth.service import create_user
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.messages.models import HL7Message, MessageStatus
from clinic.settings import Settings
from clinic.web.app import create_app
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.listener import start_listener_thread
from integrations.hl7v2.mllp import frame
from integrations.hl7v2.processor import Processor
from tests.clinic.helpers import PASSWORD, bearer, token_for
from tests.integrations.hl7v2.listener_helpers import SUPPORTED, adt_a01, oru_r01

CLINIC = str(Path(sys.executable).parent / "clinic")


def _fail_bad(session: Session, message: HL7Message) -> str:
    if message.control_id.startswith("BAD"):
        raise MappingError("no visit for PV1-19")
    return ""


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _clinic(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CLINIC_DATA_DIR": str(settings.resolved_data_dir),
        "CLINIC_ENVIRONMENT": "test",
        "COLUMNS": "200",
    }
    return subprocess.run([CLINIC, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_send_messages_and_replay(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    running = start_listener_thread(settings.model_copy(update={"mllp_host": "127.0.0.1"}), SUPPORTED)
    try:
        feed = tmp_path / "feed.hl7"
        messages = [adt_a01("OK-1"), oru_r01("OK-2"), adt_a01("BAD-1"), adt_a01("NOPID-1", patient="")]
        feed.write_bytes(b"".join(frame(m) for m in messages))
        sent = _clinic(settings, "hl7", "send", str(feed), "--to", f"127.0.0.1:{running.port}")
    finally:
        running.stop()
    assert sent.returncode == 1, sent.stderr  # one message was not accepted
    assert "4 messages" in sent.stdout
    assert "│ AA              │        3 │" in sent.stdout and "│ AE              │        1 │" in sent.stdout
    assert "required field PID-3 missing" in sent.stdout

    Processor(factory, _fail_bad).run_until_idle()
    listed = _clinic(settings, "hl7", "messages", "--status", "failed")
    assert listed.returncode == 0, listed.stderr
    assert "BAD-1" in listed.stdout and "no visit for PV1-19" in listed.stdout
    assert "OK-1" not in listed.stdout and "PATIENT" not in listed.stdout  # no patient data
    assert "failed: 1" in listed.stdout and "processed: 2" in listed.stdout and "rejected: 1" in listed.stdout

    with factory() as session:
        bad = session.scalars(select(HL7Message).where(HL7Message.control_id == "BAD-1")).one()
        ok = session.scalars(select(HL7Message).where(HL7Message.control_id == "OK-1")).one()
    replayed = _clinic(settings, "hl7", "replay", str(bad.id))
    assert replayed.returncode == 0, replayed.stderr
    with factory() as session:
        assert session.get(HL7Message, bad.id).status == MessageStatus.RECEIVED  # type: ignore[union-attr]
    refused = _clinic(settings, "hl7", "replay", str(ok.id))
    assert refused.returncode == 1 and "only failed messages" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_admin_api_lists_and_replays(settings: Settings, factory: sessionmaker[Session]) -> None:
    from clinic.messages.service import record_arrivals
    from integrations.hl7v2.listener import Door

    door = Door(SUPPORTED)
    with unit_of_work(factory) as session:
        create_user(session, "admin", PASSWORD, Role.ADMIN)
        create_user(session, "rad", PASSWORD, Role.RADIOLOGIST)
        record_arrivals(
            session,
            [door.admit(m, "peer").arrival for m in (adt_a01("OK-1"), adt_a01("BAD-1"))],  # type: ignore[misc]
        )
    Processor(factory, _fail_bad).run_until_idle()
    with TestClient(create_app(settings, factory)) as client:
        admin = bearer(token_for(client, "admin"))
        listed = client.get("/api/admin/hl7/messages", params={"status": "failed"}, headers=admin)
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert [m["control_id"] for m in body["messages"]] == ["BAD-1"]
        assert body["counts"] == {"failed": 1, "processed": 1}
        failed = body["messages"][0]
        assert failed["error"] == "no visit for PV1-19" and failed["attempts"] == 1
        assert "raw" not in failed and "PATIENT" not in listed.text

        assert (
            client.get("/api/admin/hl7/messages", params={"status": "lost"}, headers=admin).status_code == 422
        )
        rad = bearer(token_for(client, "rad"))
        assert client.get("/api/admin/hl7/messages", headers=rad).status_code == 403
        assert client.post(f"/api/admin/hl7/messages/{failed['id']}/replay", headers=rad).status_code == 403

        replayed = client.post(f"/api/admin/hl7/messages/{failed['id']}/replay", headers=admin)
        assert replayed.status_code == 200 and replayed.json()["status"] == "received"
        again = client.post(f"/api/admin/hl7/messages/{failed['id']}/replay", headers=admin)
        assert again.status_code == 409
        assert client.post("/api/admin/hl7/messages/999999/replay", headers=admin).status_code == 404
    with factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.resource_type == "hl7-message")).all()
        assert [(e.username, e.action, e.resource_id) for e in events] == [
            ("admin", "replay", str(failed["id"]))
        ]
    assert Processor(factory, lambda s, m: "").run_until_idle().processed == 1
