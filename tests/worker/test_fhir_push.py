"""FHIR push of AI reads' DiagnosticReports through the outbox (issue 5 item 6).

The external server is a second instance of the platform's own ``/fhir`` app on its own port and
database (no FHIR server we did not write installs here quickly: HAPI needs a JVM); the report
that arrives there is validated with fhir.resources. The retry path runs against a tiny ASGI app
served by uvicorn that answers what each test scripts (500 then 201, 422, ...).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.auth.models import Role
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.fhirpush.models import FhirOutbound, FhirOutboundAttempt
from clinic.fhirpush.service import PUSH_QUEUE, PUSH_TASK, dispatch_due
from clinic.migrate import upgrade
from clinic.outbox.models import OutboxMessage
from clinic.settings import Settings
from tests.clinic.helpers import add_read, store_cxr
from tests.conftest import free_port
from tests.integrations.fhir.conftest import FhirServer, _serve
from worker.app import create_celery
from worker.fhir_tasks import push, push_outbound, queue_ai_report, report_bundle

READ_SYSTEM = "urn:clinic:ai-read"


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    data_dir = tmp_path_factory.mktemp("external-fhir")
    url = f"sqlite:///{data_dir / 'clinic.db'}"
    upgrade(url)
    yield from _serve(data_dir, url)


class Scripted:
    """An ASGI FHIR endpoint answering the scripted statuses in turn (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.bodies.append(json.loads(b"".join(chunks)))
        status = self.statuses[min(len(self.bodies), len(self.statuses)) - 1]
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": f"scripted {status}"}],
        }
        body = json.dumps(
            outcome if status >= 300 else {"resourceType": "Bundle", "type": "transaction-response"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/fhir+json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


@pytest.fixture
def scripted() -> Iterator[tuple[str, Scripted]]:
    app = Scripted([201])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/fhir", app
    server.should_exit = True
    thread.join(timeout=5)


def _sender(settings: Settings, url: str, token: str = "") -> tuple[Settings, sessionmaker[Session]]:
    pushing = settings.model_copy(
        update={"fhir_push_url": url, "fhir_push_token": token, "delivery_backoff_seconds": 30.0}
    )
    return pushing, make_session_factory(make_engine(pushing.resolved_database_url))


def _read(settings: Settings, factory: sessionmaker[Session], mrn: str) -> int:
    stored = store_cxr(settings, factory, patient=mrn)
    add_read(settings, factory, stored, [("pneumothorax", "Pneumothorax", 0.91, 0.5, 2)], heatmaps=False)
    with factory() as session:
        from clinic.ai.models import AIRead

        return session.scalars(select(AIRead.id).where(AIRead.study_id == stored.study_id)).one()


def _queue(settings: Settings, factory: sessionmaker[Session], read_id: int) -> int:
    with unit_of_work(factory) as session:
        row = queue_ai_report(session, settings, read_id)
        assert row is not None
        again = queue_ai_report(session, settings, read_id)
        assert again is not None and again.id == row.id  # one push per report and server
        return row.id


def _state(
    factory: sessionmaker[Session], outbound_id: int
) -> tuple[FhirOutbound, list[FhirOutboundAttempt]]:
    with factory() as session:
        row = session.get(FhirOutbound, outbound_id)
        assert row is not None
        attempts = list(
            session.scalars(select(FhirOutboundAttempt).where(FhirOutboundAttempt.outbound_id == outbound_id))
        )
        session.expunge_all()
        return row, attempts


def test_report_arrives_at_an_external_fhir_server(settings: Settings, external: FhirServer) -> None:
    pushing, factory = _sender(settings, external.base, external.tokens[Role.ADMIN])
    read_id = _read(pushing, factory, "PUSH-1")
    outbound_id = _queue(pushing, factory, read_id)
    with factory() as session:
        task = session.scalars(select(OutboxMessage).where(OutboxMessage.task == PUSH_TASK)).one()
        assert task.queue == PUSH_QUEUE and task.kwargs == {"outbound_id": outbound_id, "token": 0}
    assert push_outbound(pushing, factory, outbound_id, 0) == "success"
    assert push_outbound(pushing, factory, outbound_id, 0) == "skipped"  # a duplicated task message
    row, attempts = _state(factory, outbound_id)
    assert (row.status, row.attempts, row.sent_at is not None) == ("sent", 1, True)
    assert [(a.outcome, a.http_status) for a in attempts] == [("success", 200)]

    with external.client() as client:
        found = client.get("/DiagnosticReport", params={"identifier": f"{READ_SYSTEM}|"}).json()
        reports = [e["resource"] for e in found.get("entry", [])]
        assert len(reports) == 1
        report = DiagnosticReport.model_validate(reports[0])  # R4B model, strict types
        assert report.status == "preliminary" and report.conclusion
        patient = client.get("/" + reports[0]["subject"]["reference"]).json()
        assert {i["value"] for i in patient["identifier"]} == {"PUSH-1"}
        study = client.get("/" + reports[0]["imagingStudy"][0]["reference"]).json()
        assert study["subject"] == reports[0]["subject"] and "basedOn" not in study
    # Pushing the same report again updates it there (conditional update), never duplicates it.
    with factory() as session:
        bundle = report_bundle(session, read_id)
    Bundle.model_validate(bundle)
    assert push(pushing, external.base, bundle)[0].value == "success"
    with external.client() as client:
        again = client.get("/DiagnosticReport", params={"identifier": f"{READ_SYSTEM}|"}).json()
        assert again["total"] == 1 and again["entry"][0]["resource"]["meta"]["versionId"] == "2"
        assert client.get("/Patient", params={"identifier": "PUSH-1"}).json()["total"] == 1


def test_server_error_is_retried_with_backoff(settings: Settings, scripted: tuple[str, Scripted]) -> None:
    url, app = scripted
    app.statuses = [500, 201]
    pushing, factory = _sender(settings, url)
    outbound_id = _queue(pushing, factory, _read(pushing, factory, "PUSH-2"))
    before = dt.datetime.now(dt.UTC)
    assert push_outbound(pushing, factory, outbound_id, 0) == "transient"
    row, attempts = _state(factory, outbound_id)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 500: scripted 500")
    assert [(a.outcome, a.http_status) for a in attempts] == [("transient", 500)]
    assert row.next_attempt_at >= before + dt.timedelta(seconds=29)
    with unit_of_work(factory) as session:
        assert dispatch_due(session) == []  # not due before its backoff
        assert dispatch_due(session, now=row.next_attempt_at + dt.timedelta(seconds=1)) == [outbound_id]
    with factory() as session:
        tokens = [
            m.kwargs["token"]
            for m in session.scalars(select(OutboxMessage).where(OutboxMessage.task == PUSH_TASK))
        ]
    assert tokens == [0, 1]
    assert push_outbound(pushing, factory, outbound_id, 1) == "success"
    row, attempts = _state(factory, outbound_id)
    assert row.status == "sent" and [a.http_status for a in attempts] == [500, 201]
    assert len(app.bodies) == 2 and app.bodies[0]["type"] == "transaction"


@pytest.mark.parametrize(
    ("status", "outcome", "final"), [(422, "permanent", "failed"), (429, "transient", "pending")]
)
def test_client_errors_fail_for_good_except_retryable(
    settings: Settings, scripted: tuple[str, Scripted], status: int, outcome: str, final: str
) -> None:
    url, app = scripted
    app.statuses = [status]
    pushing, factory = _sender(settings, url)
    outbound_id = _queue(pushing, factory, _read(pushing, factory, f"PUSH-{status}"))
    assert push_outbound(pushing, factory, outbound_id, 0) == outcome
    row, attempts = _state(factory, outbound_id)
    assert row.status == final and [(a.outcome, a.http_status) for a in attempts] == [(outcome, status)]
    if final == "failed":  # the CLI, as an engineer runs it
        env = {"CLINIC_DATA_DIR": str(settings.data_dir), "CLINIC_ENVIRONMENT": "test", "COLUMNS": "250"}
        clinic = str(Path(sys.executable).parent / "clinic")
        listed = subprocess.run(
            [clinic, "fhir", "outbound", "--status", "failed"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listed.returncode == 0, listed.stderr
        assert (
            f"DiagnosticReport/{row.resource_id}" in listed.stdout
            and "HTTP 422: scripted 422" in listed.stdout
        )


def test_unreachable_server_is_transient_and_off_means_nothing_queued(settings: Settings) -> None:
    pushing, factory = _sender(settings, f"http://127.0.0.1:{free_port()}/fhir")
    read_id = _read(pushing, factory, "PUSH-DOWN")
    outbound_id = _queue(pushing, factory, read_id)
    assert push_outbound(pushing, factory, outbound_id, 0) == "transient"
    row, attempts = _state(factory, outbound_id)
    assert row.status == "pending" and attempts[0].http_status is None and "ConnectError" in attempts[0].error
    with unit_of_work(factory) as session:
        assert queue_ai_report(session, settings, read_id) is None  # fhir_push_url "" = off


def test_push_task_is_routed_to_the_outbound_queue(settings: Settings) -> None:
    app = create_celery(settings)
    assert PUSH_TASK in app.tasks
    assert app.conf.task_routes[PUSH_TASK] == {"queue": "outbound"}
