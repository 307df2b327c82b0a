"""Bad input gets a clear answer and hurts nothing (DESIGN.md §4 rules 4 and 5).

After each refusal: the SCP still stores a good file, nothing half-written is left in the data
dir, no instance row exists for the bad object, and a ``receive_failures`` row is there wherever a
status was answered. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pydicom
import pytest
from pydicom.uid import RTPlanStorage
from pynetdicom import AE
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory
from clinic.settings import Environment, Settings
from integrations.dicom.scp import CHANNEL, ScpServer, start_scp
from integrations.dicom.status import StoreStatus
from tests.conftest import PG_ADMIN_DSN

from .helpers import (
    failures,
    instances,
    partial_files,
    pydicom_file,
    send_raw,
    store_responses,
    stored_files,
    storescu,
    synthetic_file,
)


def _still_serves(
    scp: ScpServer, folder: Path, session_factory: sessionmaker[Session], seed: int = 99
) -> None:
    good = synthetic_file(folder, f"good{seed}.dcm", seed=seed)
    sent = storescu(scp.port, good)
    assert sent.returncode == 0 and "(Success)" in store_responses(sent)[0], sent.stderr
    uid = pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID
    assert uid in {row.sop_instance_uid for row in instances(session_factory)}


def _nothing_left(settings: Settings, session_factory: sessionmaker[Session], uid: str) -> None:
    assert partial_files(settings) == []
    assert uid not in {row.sop_instance_uid for row in instances(session_factory)}
    assert not [p for p in stored_files(settings) if p.stem == uid]


def _exchange(port: int, garbage: bytes, *, hang_up: bool = False, timeout: float = 10) -> bytes:
    """Send *garbage* on a raw TCP connection; what comes back until the server closes it or
    sends an A-ABORT / A-ASSOCIATE-RJ (after which it waits for *us* to close, PS3.8 Sta13)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(garbage)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
                if answer[:1] in (b"\x03", b"\x07") and len(answer) >= 10:
                    break
        except ConnectionResetError:
            pass
    return answer


@pytest.mark.parametrize(
    ("garbage", "hang_up"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),  # not a PDU type at all
        (b"\x01\x00\x00\x00\x00\x40" + b"\xff" * 64, False),  # an A-ASSOCIATE-RQ, nonsense inside
        (b"\x04\x00\x00\x00\x00\x10" + b"\x00" * 16, False),  # P-DATA before any association
        (b"\x01\x00\xff\xff\xff\xf0" + b"\x00" * 10, True),  # a 4 GiB PDU, then the peer hangs up
        (bytes(range(256)) * 8, True),  # noise
    ],
    ids=["http", "bad-associate", "p-data-first", "huge-pdu", "noise"],
)
def test_garbage_bytes_over_tcp(
    garbage: bytes,
    hang_up: bool,
    scp: ScpServer,
    session_factory: sessionmaker[Session],
    scp_settings: Settings,
    tmp_path: Path,
) -> None:
    answer = _exchange(scp.port, garbage, hang_up=hang_up)
    # Refused with an A-ABORT (0x07) or an A-ASSOCIATE-RJ (0x03), or the connection is closed.
    assert answer[:1] in (b"", b"\x03", b"\x07"), answer[:16]
    _still_serves(scp, tmp_path, session_factory)
    assert partial_files(scp_settings) == []
    assert len(instances(session_factory)) == 1
    assert failures(session_factory) == []  # no status was answered, so no failure row


def test_a_peer_that_stalls_mid_pdu_is_dropped(
    scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Half a PDU and silence: the connection is closed after the network timeout."""
    with start_scp(scp_settings, session_factory, network_timeout=1.0) as server:
        started = time.monotonic()
        answer = _exchange(server.port, b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 20, timeout=15)
        assert answer[:1] in (b"", b"\x07")
        assert time.monotonic() - started < 10
        _still_serves(server, tmp_path, session_factory)


def _pixel_data_offset(path: Path) -> int:
    """Where the Pixel Data element starts in the file (its tag)."""
    data = path.read_bytes()
    return data.rindex(b"\xe0\x7f\x10\x00")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("last byte", StoreStatus.CANNOT_UNDERSTAND),
        ("inside the pixel data", StoreStatus.CANNOT_UNDERSTAND),
        ("inside an element header", StoreStatus.CANNOT_UNDERSTAND),
        ("before the pixel data", StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ],
)
def test_truncated_dataset(
    where: str,
    expected: StoreStatus,
    scp: ScpServer,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A data set cut short: Cannot Understand, or, cut at an element boundary, Pixel Data missing."""
    source = pydicom_file("CT_small.dcm")
    data = source.read_bytes()
    pixel_data = _pixel_data_offset(source)
    end = {
        "last byte": len(data) - 1,
        "inside the pixel data": pixel_data + 5000,
        "inside an element header": pixel_data + 3,
        "before the pixel data": pixel_data,
    }[where]
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[:end])
    status = send_raw(scp.port, bad, monkeypatch)
    assert status.Status == expected
    reason = str(status.ErrorComment)
    assert (
        ("PixelData" in reason)
        if expected == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
        else ("past the end" in reason or "truncated" in reason)
    ), reason
    uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    _nothing_left(scp_settings, session_factory, uid)
    [failure] = failures(session_factory)
    assert failure.channel == CHANNEL
    assert failure.status_code == expected
    assert failure.sop_instance_uid == uid
    assert failure.calling_ae == "RAWSCU"
    _still_serves(scp, tmp_path, session_factory)


def test_dataset_that_does_not_match_its_sop_class(
    scp: ScpServer,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sent on a CT context, the data set says MR: 0xA900."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path)  # the File Meta still says CT Image Storage
    status = send_raw(scp.port, path, monkeypatch)
    assert status.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    _nothing_left(scp_settings, session_factory, ds.SOPInstanceUID)
    [failure] = failures(session_factory)
    assert failure.status_code == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOP Class UID" in failure.reason
    _still_serves(scp, tmp_path, session_factory)


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("StudyInstanceUID", None, "missing Type 1 attribute StudyInstanceUID"),
        ("SeriesInstanceUID", "", "missing Type 1 attribute SeriesInstanceUID"),
        ("StudyInstanceUID", "1.2.3/../../../../etc", "invalid StudyInstanceUID"),
        ("SeriesInstanceUID", "1." * 40 + "1", "invalid SeriesInstanceUID"),
        ("PixelData", None, "missing Type 1 attribute PixelData"),
    ],
)
def test_missing_or_unsafe_uids(
    keyword: str,
    value: str | None,
    reason: str,
    scp: ScpServer,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = synthetic_file(tmp_path, "bad.dcm", seed=5)
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if value is None:
            delattr(ds, keyword)
        else:
            ds[keyword].value = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs we mean to send
        ds.save_as(path)
    status = send_raw(scp.port, path, monkeypatch)
    assert status.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    _nothing_left(scp_settings, session_factory, ds.SOPInstanceUID)
    assert not list(scp_settings.dicom_dir.glob("**/etc*"))
    [failure] = failures(session_factory)
    assert reason in failure.reason
    _still_serves(scp, tmp_path, session_factory)


def test_unsupported_sop_class_is_rejected(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """An RT Plan or a made-up SOP class: the presentation context is rejected, nothing is sent."""
    sent = storescu(scp.port, pydicom_file("rtplan.dcm"))
    assert sent.returncode != 0
    assert "No presentation context" in sent.stderr + sent.stdout
    ae = AE(ae_title="ODDSCU")
    ae.add_requested_context(RTPlanStorage)
    ae.add_requested_context("1.2.826.0.1.3680043.9.9999.1")  # not a SOP class of anybody's
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="CLINIC")
    if assoc.is_established:  # pynetdicom accepts the association with every context rejected
        assert not assoc.accepted_contexts
        assoc.release()
    assert stored_files(scp_settings) == []
    assert instances(session_factory) == []
    _still_serves(scp, tmp_path, session_factory)


def test_no_patient_name_in_the_logs(
    scp: ScpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    good = synthetic_file(tmp_path, "named.dcm", seed=7, patient_name="SECRET^NAME")
    assert "(Success)" in store_responses(storescu(scp.port, good))[0]
    ds = pydicom.dcmread(good)
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "named-bad.dcm")
    assert send_raw(scp.port, tmp_path / "named-bad.dcm", monkeypatch).Status != StoreStatus.SUCCESS
    assert "C-STORE refused" in caplog.text
    assert "SECRET" not in caplog.text


# --- the database is not there -------------------------------------------------------------------


@pytest.fixture
def impatient_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory that waits at most ~0.3 s for a lock (the SCP's default waits 30 s)."""
    if db_url.startswith("sqlite"):
        engine = make_engine(db_url)

        @event.listens_for(engine, "connect")
        def _short_busy_timeout(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout=300")

    else:
        engine = make_engine(db_url, connect_args={"options": "-c lock_timeout=300"})
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def impatient_scp(scp_settings: Settings, impatient_factory: sessionmaker[Session]) -> Iterator[ScpServer]:
    server = start_scp(scp_settings, impatient_factory)
    yield server
    server.shutdown()


def _hold_write_lock(db_url: str) -> tuple[object, object]:
    """Another client holds the lock the SCP needs to write its row."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return conn, conn.rollback
    pg = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"))
    pg.execute("LOCK TABLE instances IN EXCLUSIVE MODE")
    return pg, pg.rollback


def test_locked_database_refuses_and_leaves_no_file(
    impatient_scp: ScpServer,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
    db_url: str,
    tmp_path: Path,
) -> None:
    """The row cannot be written: Out of Resources (the sender retries), and no file is kept."""
    path = synthetic_file(tmp_path, "locked.dcm", seed=11)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    holder, release = _hold_write_lock(db_url)
    try:
        sent = storescu(impatient_scp.port, path)
        assert store_responses(sent) == ["I: Received Store Response (Refused: OutOfResources)"]
        assert partial_files(scp_settings) == []
        assert stored_files(scp_settings) == []
    finally:
        release()  # type: ignore[operator]
        holder.close()  # type: ignore[attr-defined]
    _nothing_left(scp_settings, session_factory, uid)
    if not db_url.startswith("sqlite"):  # on PostgreSQL only the instances table was locked
        assert [f.status_code for f in failures(session_factory)] == [StoreStatus.OUT_OF_RESOURCES]
    _still_serves(impatient_scp, tmp_path, session_factory)
    sent = storescu(impatient_scp.port, path)  # the sender's retry goes through
    assert "(Success)" in store_responses(sent)[0]


@pytest.mark.postgres
def test_unreachable_database_refuses(tmp_path: Path, data_dir: Path, pg_database: str) -> None:
    """PostgreSQL refuses connections: Out of Resources, no file; the SCP recovers when it is back."""
    settings = Settings(
        data_dir=data_dir,
        database_url=pg_database,
        environment=Environment.TEST,
        dicom_host="127.0.0.1",
        dicom_port=0,
    )
    settings.ensure_dirs()
    name = pg_database.rsplit("/", 1)[1]
    path = synthetic_file(tmp_path, "down.dcm", seed=12)
    with start_scp(settings) as server:
        assert (
            "(Success)"
            in store_responses(storescu(server.port, synthetic_file(tmp_path, "up.dcm", seed=13)))[0]
        )
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            try:
                sent = storescu(server.port, path)
                [line] = store_responses(sent)
                assert line == "I: Received Store Response (Refused: OutOfResources)", line
                assert len(stored_files(settings)) == 1
                assert partial_files(settings) == []
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        time.sleep(0.1)
        assert "(Success)" in store_responses(storescu(server.port, path))[0]
    assert len(stored_files(settings)) == 2
