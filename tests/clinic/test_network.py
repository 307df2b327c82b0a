"""Remote AEs and result deliveries: the service, the admin API (``/api/admin/dicom``) and the
``clinic dicom`` commands (real subprocesses), on a real database."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.service import FindingIn, ReadIn, record_read
from clinic.audit.models import AuditEvent
from clinic.auth.models import Role
from clinic.db import unit_of_work
from clinic.imaging.service import InstanceMeta, record_instance
from clinic.network import service
from clinic.network.service import AEIn
from clinic.patients.service import PatientDemographics
from clinic.results.models import ResultKind
from clinic.results.service import (
    AttemptOutcome,
    NewResultObject,
    claim_delivery,
    finish_attempt,
    record_result_objects,
)
from tests.clinic.helpers import add_user, bearer, token_for

CLINIC = str(Path(sys.executable).parent / "clinic")
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BASE = "/api/admin/dicom"


def audit_rows(factory: sessionmaker[Session]) -> list[AuditEvent]:
    with unit_of_work(factory) as session:
        query = select(AuditEvent).where(AuditEvent.resource_type == "remote-ae").order_by(AuditEvent.id)
        return list(session.scalars(query))


# --- service -----------------------------------------------------------------------------------


def test_ae_service_rules(session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        pacs = service.add_ae(
            session, AEIn(" PACS ", "pacs.local", 104, receives_results=True, may_store=True)
        )
        service.add_ae(session, AEIn("CT1", "10.0.0.5", 11112, may_store=True, enabled=False))
        service.add_ae(session, AEIn("ARCHIVE", "10.0.0.6", 104, may_store=False, query_priors=True))
        assert pacs.ae_title == "PACS"
        assert [a.ae_title for a in service.list_aes(session)] == ["ARCHIVE", "CT1", "PACS"]
        assert service.allowed_calling_aes(session) == {"PACS"}  # CT1 disabled, ARCHIVE may not store
        assert [a.ae_title for a in service.result_destinations(session)] == ["PACS"]
        with pytest.raises(service.AEExistsError):
            service.add_ae(session, AEIn("PACS", "other", 104))
        for bad, message in [
            (AEIn("A" * 17, "h", 104), "longer than 16"),
            (AEIn("BAD\\AE", "h", 104), "backslash"),
            (AEIn("   ", "h", 104), "empty"),
            (AEIn("OK", "h", 0), "port 0"),
            (AEIn("OK", " ", 104), "host is empty"),
            (AEIn("OK", "h", 104, retrieve_method="fax"), "retrieve method"),
        ]:
            with pytest.raises(service.NetworkError, match=message):
                service.add_ae(session, bad)

        before = service.to_ae_in(pacs)
        after = service.with_changes(pacs, port=11112, may_store=None, description="main PACS")
        assert after.may_store is True and after.port == 11112  # None keeps the stored value
        assert service.describe_changes(before, after) == "port: 104 -> 11112, description:  -> main PACS"
        service.update_ae(session, "PACS", after)
        with pytest.raises(service.NetworkError, match="unknown AE field"):
            service.with_changes(pacs, colour="blue")
        with pytest.raises(service.AEExistsError):
            service.update_ae(session, "PACS", service.with_changes(pacs, ae_title="CT1"))
        with pytest.raises(service.UnknownAEError, match="NOPE"):
            service.get_ae(session, "NOPE")
        service.remove_ae(session, "CT1")
        assert service.find_ae(session, "CT1") is None


# --- API ---------------------------------------------------------------------------------------


@pytest.fixture
def admin_headers(client: TestClient, session_factory: sessionmaker[Session]) -> dict[str, str]:
    add_user(session_factory, "admin1", Role.ADMIN)
    return bearer(token_for(client, "admin1"))


@SQLITE_ONLY
def test_admin_api_manages_aes_with_audit(
    client: TestClient, session_factory: sessionmaker[Session], admin_headers: dict[str, str]
) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    assert client.get(f"{BASE}/aes").status_code == 401
    assert client.get(f"{BASE}/aes", headers=bearer(token_for(client, "rad1"))).status_code == 403

    body = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "receives_results": True}
    created = client.post(f"{BASE}/aes", json=body, headers=admin_headers)
    assert created.status_code == 201, created.text
    assert created.json()["may_store"] is True and created.json()["receives_results"] is True
    assert client.post(f"{BASE}/aes", json=body, headers=admin_headers).status_code == 409
    bad = client.post(f"{BASE}/aes", json={**body, "ae_title": "BAD\\AE"}, headers=admin_headers)
    assert bad.status_code == 422 and "backslash" in bad.text
    assert client.post(f"{BASE}/aes", json={**body, "port": 70000}, headers=admin_headers).status_code == 422

    changed = client.put(f"{BASE}/aes/PACS", json={"port": 4242, "ae_title": "PACS2"}, headers=admin_headers)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["ae_title"], changed.json()["port"], changed.json()["host"]) == (
        "PACS2",
        4242,
        "127.0.0.1",
    )
    assert client.put(f"{BASE}/aes/NOPE", json={"port": 1}, headers=admin_headers).status_code == 404
    listed = client.get(f"{BASE}/aes", headers=admin_headers).json()
    assert [a["ae_title"] for a in listed] == ["PACS2"]
    assert client.delete(f"{BASE}/aes/PACS2", headers=admin_headers).status_code == 204
    assert client.get(f"{BASE}/aes", headers=admin_headers).json() == []
    assert client.delete(f"{BASE}/aes/PACS2", headers=admin_headers).status_code == 404

    rows = audit_rows(session_factory)
    assert [(r.action, r.resource_id, r.username) for r in rows] == [
        ("create", "PACS", "admin1"),
        ("update", "PACS2", "admin1"),
        ("delete", "PACS2", "admin1"),
    ]
    assert "port: 104 -> 4242" in rows[1].detail and "ae_title: PACS -> PACS2" in rows[1].detail


def _delivery_with_a_failed_attempt(factory: sessionmaker[Session]) -> str:
    """A study with an AI read, its SR recorded and one delivery to PACS that failed once."""
    study_uid, series_uid, sop_uid = "1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1"

    def meta(series: str, sop: str, modality: str, sop_class: str) -> InstanceMeta:
        return InstanceMeta(
            patient=PatientDemographics(identifier="NET1"),
            study_uid=study_uid,
            series_uid=series,
            sop_instance_uid=sop,
            sop_class_uid=sop_class,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            file_path=f"dicom/{study_uid}/{series}/{sop}.dcm",
            file_size=1,
            modality=modality,
        )

    with unit_of_work(factory) as session:
        service.add_ae(session, AEIn("PACS", "127.0.0.1", 9, receives_results=True))
        recorded = record_instance(session, meta(series_uid, sop_uid, "DX", "1.2.840.10008.5.1.4.1.1.1.1"))
        read = record_read(
            session,
            recorded.study_id,
            None,
            ReadIn("demo-cxr", "Demo", "1", sop_uid, True, findings=(FindingIn("c", "C", 0.9, 0.5),)),
        )
        sr = NewResultObject(
            ResultKind.SR, meta("1.2.3.4.2", "1.2.3.4.2.1", "SR", "1.2.840.10008.5.1.4.1.1.88.34")
        )
        created = record_result_objects(
            session, read.id, [sr], expected_existing=frozenset(), handout_lease=dt.timedelta(0)
        )
        assert created is not None
    with unit_of_work(factory) as session:
        claim = claim_delivery(session, 1)
        assert claim is not None
        finish_attempt(
            session, claim.attempt_id, AttemptOutcome.TRANSIENT, error="association not established"
        )
    return study_uid


@SQLITE_ONLY
def test_admin_api_lists_deliveries_and_resends(
    client: TestClient, session_factory: sessionmaker[Session], admin_headers: dict[str, str]
) -> None:
    study_uid = _delivery_with_a_failed_attempt(session_factory)
    listed = client.get(f"{BASE}/deliveries", params={"status": "pending"}, headers=admin_headers)
    assert listed.status_code == 200, listed.text
    (row,) = listed.json()
    assert (row["status"], row["destination"], row["kind"], row["study_uid"]) == (
        "pending",
        "PACS",
        "SR",
        study_uid,
    )
    assert [(a["outcome"], a["error"]) for a in row["attempt_log"]] == [
        ("transient", "association not established")
    ]
    assert client.get(f"{BASE}/deliveries", params={"status": "sent"}, headers=admin_headers).json() == []
    assert (
        client.get(f"{BASE}/deliveries", params={"status": "lost"}, headers=admin_headers).status_code == 422
    )

    resent = client.post(f"{BASE}/studies/{study_uid}/resend", headers=admin_headers)
    assert resent.status_code == 200, resent.text
    assert resent.json() == {"study_uid": study_uid, "deliveries": [row["id"]], "rebuilt_reads": []}
    assert client.post(f"{BASE}/studies/9.9.9/resend", headers=admin_headers).status_code == 404
    with unit_of_work(session_factory) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "resend")).one()
        assert event.resource_id == study_uid and event.username == "admin1"


# --- CLI ---------------------------------------------------------------------------------------


def clinic(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLINIC_")},
        "CLINIC_DATA_DIR": str(data_dir),
        "CLINIC_ENVIRONMENT": "test",
        "COLUMNS": "240",
    }
    return subprocess.run([CLINIC, *args], env=env, capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def echo_scp() -> Iterator[int]:
    """A Verification SCP (pynetdicom) standing in for a PACS."""
    ae = AE(ae_title="ECHOPACS")
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def invoke(data: Path, *args: str) -> tuple[int, str]:
    """The command in this process (typer's CliRunner): (exit code, output or the CliError's line)."""
    from typer.testing import CliRunner

    from clinicctl.errors import CliError
    from clinicctl.main import app

    env = {"CLINIC_DATA_DIR": str(data), "CLINIC_ENVIRONMENT": "test", "COLUMNS": "240"}
    result = CliRunner().invoke(app, list(args), env=env)
    if isinstance(result.exception, CliError):
        return 1, str(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def test_cli_ae_commands(tmp_path: Path, echo_scp: int) -> None:
    """A few commands as real subprocesses (what a user sees: one-line errors, the table), the
    others in-process to keep the test fast."""
    data = tmp_path / "var"
    added = clinic(
        data, "dicom", "ae", "add", "ECHOPACS", "--host", "127.0.0.1", "--port", str(echo_scp), "--results"
    )
    assert added.returncode == 0, added.stderr
    assert "ECHOPACS" in added.stdout
    one_line_error(
        clinic(data, "dicom", "ae", "add", "ECHOPACS", "--host", "h", "--port", "1"), "already exists"
    )
    assert invoke(data, "dicom", "ae", "add", "X" * 17, "--host", "h", "--port", "1") == (
        1,
        f"invalid AE title {'X' * 17!r}: longer than 16 characters",
    )

    code, out = invoke(
        data, "dicom", "ae", "update", "ECHOPACS", "--no-store", "--priors", "--retrieve", "get"
    )
    assert code == 0, out
    listed = clinic(data, "dicom", "ae", "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if "ECHOPACS" in row]
    cells = [cell.strip() for cell in line.split("│")[4:9]]  # enabled, store, results, priors, retrieve
    assert cells == ["yes", "no", "yes", "yes", "get"], line

    code, out = invoke(data, "dicom", "echo", "ECHOPACS")
    assert code == 0 and f"C-ECHO success from ECHOPACS at 127.0.0.1:{echo_scp}" in out, out
    one_line_error(clinic(data, "dicom", "echo", "NOSUCH"), "no remote AE titled 'NOSUCH'")

    assert invoke(data, "dicom", "deliveries", "--status", "lost")[1].startswith("unknown status 'lost'")
    code, out = invoke(data, "dicom", "deliveries")
    assert code == 0 and "Result deliveries (0)" in out
    assert invoke(data, "dicom", "resend", "9.9.9") == (1, "no study with StudyInstanceUID 9.9.9")

    code, out = invoke(data, "dicom", "ae", "remove", "ECHOPACS")
    assert code == 0 and "ECHOPACS removed" in out
    assert invoke(data, "dicom", "ae", "remove", "ECHOPACS") == (1, "no remote AE titled 'ECHOPACS'")

    from clinic.db import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{data / 'clinic.db'}")
    try:
        rows = audit_rows(make_session_factory(engine))
    finally:
        engine.dispose()
    assert [(r.action, r.resource_id) for r in rows] == [
        ("create", "ECHOPACS"),
        ("update", "ECHOPACS"),
        ("delete", "ECHOPACS"),
    ]
    assert rows[0].username.startswith("cli") and "may_store: True -> False" in rows[1].detail
    assert all(r.resource_type == "remote-ae" for r in rows)
