"""The MLLP listener against real clients: python-hl7's ``mllp_send`` (a client we did not write),
plain sockets that misbehave, many connections at once, TLS; the store on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory
from clinic.messages.models import HL7Message, MessageStatus
from clinic.settings import Settings
from integrations.hl7v2.codec import message_text
from integrations.hl7v2.listener import RunningListener, start_listener_thread
from integrations.hl7v2.mllp import Frame, FrameReader, MLLPClient, frame
from tests.integrations.hl7v2.listener_helpers import (
    SUPPORTED,
    adt_a01,
    connect,
    err,
    msa,
    msh,
    orm_o01,
    oru_r01,
    parsed,
)

MLLP_SEND = str(Path(sys.executable).with_name("mllp_send"))
LIMIT = 64 * 1024


def _listener_settings(base: Settings, **changes: object) -> Settings:
    return base.model_copy(update={"mllp_host": "127.0.0.1", "hl7_max_message_bytes": LIMIT, **changes})


@pytest.fixture
def store(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def listener(settings: Settings, db_url: str) -> Iterator[RunningListener]:
    """The listener on the test's database (SQLite, then PostgreSQL)."""
    running = start_listener_thread(_listener_settings(settings, database_url=db_url), SUPPORTED)
    yield running
    running.stop()


@pytest.fixture
def sqlite_store(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def sqlite_listener(settings: Settings) -> Iterator[RunningListener]:
    running = start_listener_thread(_listener_settings(settings), SUPPORTED)
    yield running
    running.stop()


def _rows(factory: sessionmaker[Session]) -> list[HL7Message]:
    with factory() as session:
        return list(session.scalars(select(HL7Message).order_by(HL7Message.id)))


def _acks_from(output: bytes) -> list[bytes]:
    """The response blocks that mllp_send printed (each raw, followed by a newline)."""
    return [b.payload for b in FrameReader(1 << 20).feed(output) if isinstance(b, Frame)]


def test_mllp_send_adt_orm_oru_are_acknowledged_and_stored(
    listener: RunningListener, store: sessionmaker[Session], tmp_path: Path
) -> None:
    sent = [adt_a01("ADT-1"), orm_o01("ORM-1"), oru_r01("ORU-1", observations=11)]
    path = tmp_path / "feed.hl7"
    # --loose: one message after another, segments on LF lines, as people keep them in files.
    path.write_bytes(b"\n".join(m.replace(b"\r", b"\n") for m in sent) + b"\n")
    result = subprocess.run(
        [MLLP_SEND, "--loose", "-f", str(path), "-p", str(listener.port), "127.0.0.1"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    acks = _acks_from(result.stdout)
    assert len(acks) == 3
    for ack, control_id in zip(acks, ["ADT-1", "ORM-1", "ORU-1"], strict=True):
        assert msa(ack) == ("AA", control_id)
        message = parsed(ack)
        # Sender and receiver swapped: we are CLINIC/SMARTCLINIC, they are EMR/HOSP.
        assert (message.msh.msh_3.to_er7(), message.msh.msh_4.to_er7()) == ("CLINIC", "SMARTCLINIC")
        assert (message.msh.msh_5.to_er7(), message.msh.msh_6.to_er7()) == ("EMR", "HOSP")
        loose = hl7.parse(ack.decode())
        assert str(loose.segment("MSA")[1]) == "AA" and str(loose.segment("MSA")[2]) == control_id
    rows = _rows(store)
    assert [(r.control_id, r.status, r.ack_code) for r in rows] == [
        ("ADT-1", MessageStatus.RECEIVED, "AA"),
        ("ORM-1", MessageStatus.RECEIVED, "AA"),
        ("ORU-1", MessageStatus.RECEIVED, "AA"),
    ]
    assert [r.message_type for r in rows] == ["ADT^A01^ADT_A01", "ORM^O01^ORM_O01", "ORU^R01^ORU_R01"]
    for row, original in zip(rows, sent, strict=True):
        assert message_text(row.raw, row.charset) == original.decode()
        assert row.ack == acks[rows.index(row)]  # the stored answer is the one sent


def test_mllp_send_framed_file_and_a_repeat_is_answered_from_the_store(
    listener: RunningListener, store: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "framed.hl7"
    path.write_bytes(frame(adt_a01("DUP-1")) + frame(adt_a01("DUP-1")) + frame(adt_a01("DUP-2")))
    result = subprocess.run(
        [MLLP_SEND, "-f", str(path), "-p", str(listener.port), "127.0.0.1"], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first, repeat, other = _acks_from(result.stdout)
    assert repeat == first  # the original response again, byte for byte
    assert msa(other) == ("AA", "DUP-2")
    assert [r.control_id for r in _rows(store)] == ["DUP-1", "DUP-2"]


def test_many_connections_at_once(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    clients, per_client = 16, 25
    answers: dict[str, str] = {}
    lock = threading.Lock()

    def run(n: int) -> None:
        with MLLPClient("127.0.0.1", sqlite_listener.port, timeout=30) as client:
            for i in range(per_client):
                control_id = f"C{n}-{i}"
                code, acked = msa(client.send(adt_a01(control_id, app=f"APP{n % 3}")))
                with lock:
                    answers[acked] = code
                assert acked == control_id

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == clients * per_client and set(answers.values()) == {"AA"}
    with sqlite_store() as session:
        assert session.scalar(select(func.count()).select_from(HL7Message)) == clients * per_client
    # Per connection, arrival order is id order (processing relies on it).
    rows = _rows(sqlite_store)
    for n in range(clients):
        mine = [int(r.control_id.split("-")[1]) for r in rows if r.control_id.startswith(f"C{n}-")]
        assert mine == sorted(mine)


# --- bad input ------------------------------------------------------------------------------------


def _refused(port: int, payload: bytes) -> bytes:
    with connect(port) as client:
        return client.send(payload)


def test_non_hl7_bytes_in_a_block_get_ar_and_nothing_is_stored(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    for payload in (b"hello, not HL7", b"PID|1||P1^^^HOSP^MR\rPV1|1|I", b"MSH|^^\\&|EMR|HOSP"):
        ack = _refused(sqlite_listener.port, payload)
        assert msa(ack) == ("AR", "")
        location, code, text = err(ack)
        assert code == "102" and text
    assert _rows(sqlite_store) == []


@pytest.mark.parametrize(
    ("payload", "code", "ack_code", "location", "reason"),
    [
        (adt_a01("T1").replace(b"ADT^A01^ADT_A01", b"ZZZ^Z01"), "200", "AR", "MSH^1^9", "ZZZ"),
        (adt_a01("T2").replace(b"ADT^A01^ADT_A01", b"ADT^A99"), "201", "AR", "MSH^1^9", "A99"),
        (adt_a01("T3", patient=""), "101", "AE", "PID^1^3", "PID-3"),
        (adt_a01("T4").replace(b"|P|2.5.1", b"|X|2.5.1"), "202", "AR", "MSH^1^11", "MSH-11"),
        (adt_a01("T5").replace(b"|P|2.5.1", b"|P|3.0"), "203", "AR", "MSH^1^12", "MSH-12"),
        (adt_a01("T6", charset="UNICODE UTF-16"), "103", "AR", "MSH^1^18", "MSH-18"),
        (adt_a01("T7").replace(b"TEST^PATIENT", "TÉST".encode("latin-1")), "102", "AR", "MSH^1^18", "ASCII"),
    ],
    ids=["type", "event", "required", "processing-id", "version", "charset", "undeclared-8bit"],
)
def test_refusals_name_the_reason_and_are_kept_as_rejected(
    sqlite_listener: RunningListener,
    sqlite_store: sessionmaker[Session],
    payload: bytes,
    code: str,
    ack_code: str,
    location: str,
    reason: str,
) -> None:
    ack = _refused(sqlite_listener.port, payload)
    assert msa(ack)[0] == ack_code
    assert err(ack)[:2] == (location, code)
    assert reason in err(ack)[2]
    (row,) = _rows(sqlite_store)
    assert row.status == MessageStatus.REJECTED and row.ack == ack and row.ack_code == ack_code
    assert row.error.startswith(code) and reason in row.error
    assert row.raw == payload


def test_a_corrected_message_may_reuse_a_rejected_control_id(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    with connect(sqlite_listener.port) as client:
        assert msa(client.send(adt_a01("FIX-1", patient="")))[0] == "AE"
        assert msa(client.send(adt_a01("FIX-1"))) == ("AA", "FIX-1")
        assert msa(client.send(adt_a01("FIX-1"))) == ("AA", "FIX-1")  # now a repeat
    rows = _rows(sqlite_store)
    assert [(r.status, r.control_id.split("#")[0]) for r in rows] == [
        (MessageStatus.REJECTED, "FIX-1"),
        (MessageStatus.RECEIVED, "FIX-1"),
    ]


def test_lf_only_message_is_accepted_after_normalising(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    lf = oru_r01("LF-1").replace(b"\r", b"\n") + b"\n"
    assert msa(_refused(sqlite_listener.port, lf)) == ("AA", "LF-1")
    (row,) = _rows(sqlite_store)
    assert row.raw == lf  # stored as received
    assert message_text(row.raw, row.charset).split("\r")[1].startswith("PID|")


def test_declared_charsets_and_bom(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    hangul = "이^민지"
    korean = adt_a01("KR-1", charset="KS X 1001").replace(b"TEST^PATIENT", hangul.encode("euc_kr"))
    bom = b"\xef\xbb\xbf" + adt_a01("BOM-1").replace(b"TEST^PATIENT", hangul.encode())
    with connect(sqlite_listener.port) as client:
        korean_ack = client.send(korean)
        assert msa(korean_ack) == ("AA", "KR-1")
        assert parsed(korean_ack).msh.msh_18.to_er7() == "KS X 1001"
        assert msa(client.send(bom)) == ("AA", "BOM-1")
    kr, utf8 = _rows(sqlite_store)
    assert (kr.charset, utf8.charset) == ("euc_kr", "utf-8")
    assert hangul in message_text(kr.raw, kr.charset) and hangul in message_text(utf8.raw, utf8.charset)


def test_oversized_message_gets_ar_and_the_connection_goes_on(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    big = oru_r01("BIG-1", observations=2000)
    assert len(big) > LIMIT
    with connect(sqlite_listener.port) as client:
        ack = client.send(big)
        assert msa(ack) == ("AR", "BIG-1")
        assert f"{len(big)} bytes exceeds the limit of {LIMIT}" in err(ack)[2]
        assert msa(client.send(adt_a01("AFTER-BIG"))) == ("AA", "AFTER-BIG")
    big_row, after = _rows(sqlite_store)
    assert big_row.status == MessageStatus.REJECTED and len(big_row.raw) < len(big)
    assert after.status == MessageStatus.RECEIVED


def test_pipelined_messages_are_answered_in_order(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    """A sender that writes 40 messages at once, refused ones among them, gets 40 answers in its
    own order: a refusal (answered without a commit) never overtakes a stored message's ACK."""
    messages = [adt_a01(f"PIPE-{n}") if n % 7 else adt_a01(f"PIPE-{n}", version="9.9") for n in range(40)]
    with connect(sqlite_listener.port) as client:
        client.send_raw(b"".join(frame(m) for m in messages))
        answers = [msa(client.receive()) for _ in messages]
    assert answers == [(("AA" if n % 7 else "AR"), f"PIPE-{n}") for n in range(40)]
    stored = {r.control_id: r.status for r in _rows(sqlite_store)}
    assert len(stored) == 40
    assert all(
        status == (MessageStatus.RECEIVED if int(cid.split("-")[1]) % 7 else MessageStatus.REJECTED)
        for cid, status in stored.items()
    )


def test_an_idle_connection_is_closed_and_others_go_on(settings: Settings) -> None:
    running = start_listener_thread(_listener_settings(settings, hl7_idle_timeout_s=0.3), SUPPORTED)
    try:
        with connect(running.port) as idle, connect(running.port) as busy:
            assert msa(idle.send(adt_a01("IDLE-1"))) == ("AA", "IDLE-1")
            for n in range(8):  # 0.8 s of traffic on the other connection keeps it open
                assert msa(busy.send(adt_a01(f"BUSY-{n}"))) == ("AA", f"BUSY-{n}")
                time.sleep(0.1)
            with pytest.raises(ConnectionError):
                idle.receive()
            assert msa(busy.send(adt_a01("BUSY-LAST"))) == ("AA", "BUSY-LAST")
    finally:
        running.stop()


def test_bytes_that_cannot_be_framed_close_the_connection(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    with connect(sqlite_listener.port) as client:
        client.send_raw(b"GET / HTTP/1.1\r\nHost: clinic\r\n\r\n")
        with pytest.raises(ConnectionError):
            client.receive()
    assert msa(_refused(sqlite_listener.port, adt_a01("STILL-UP"))) == ("AA", "STILL-UP")
    assert [r.control_id for r in _rows(sqlite_store)] == ["STILL-UP"]


def test_a_drop_mid_frame_stores_nothing_and_hurts_no_one(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    with connect(sqlite_listener.port) as other:
        with connect(sqlite_listener.port) as dropping:
            dropping.send_raw(frame(adt_a01("HALF-1"))[:60])
        # RST instead of FIN: the harshest way a peer can go away.
        rst = socket.create_connection(("127.0.0.1", sqlite_listener.port))
        rst.sendall(frame(adt_a01("HALF-2"))[:60])
        rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        rst.close()
        assert msa(other.send(adt_a01("WHOLE-1"))) == ("AA", "WHOLE-1")
    assert [r.control_id for r in _rows(sqlite_store)] == ["WHOLE-1"]


def test_an_ack_is_stored_and_never_answered(
    sqlite_listener: RunningListener, sqlite_store: sessionmaker[Session]
) -> None:
    incoming_ack = (msh("THEIR-ACK", "ACK^A01^ACK") + "\rMSA|AA|OUR-1").encode()
    with connect(sqlite_listener.port, timeout=1.0) as client:
        client.send_raw(frame(incoming_ack))
        with pytest.raises(TimeoutError):
            client.receive()
    (row,) = _rows(sqlite_store)
    assert row.status == MessageStatus.REJECTED and row.ack == b"" and "acknowledgement" in row.error


def test_enhanced_mode_commit_acks(sqlite_listener: RunningListener) -> None:
    with connect(sqlite_listener.port, timeout=1.0) as client:
        assert msa(client.send(adt_a01("E1", accept_ack="AL", app_ack="NE"))) == ("CA", "E1")
        assert msa(client.send(adt_a01("E2", patient="", accept_ack="AL"))) == ("CE", "E2")
        assert msa(client.send(adt_a01("E3", accept_ack="ER").replace(b"A01^ADT", b"A99^ADT"))) == (
            "CR",
            "E3",
        )
        client.send_raw(frame(adt_a01("E4", accept_ack="NE")))  # asks for no accept acknowledgement
        with pytest.raises(TimeoutError):
            client.receive()
        assert msa(client.send(adt_a01("E5", accept_ack="SU"))) == ("CA", "E5")


def test_store_unavailable_answers_ar_send_again(settings: Settings, tmp_path: Path) -> None:
    unmigrated = f"sqlite:///{tmp_path / 'empty.db'}"
    running = start_listener_thread(_listener_settings(settings, database_url=unmigrated), SUPPORTED)
    try:
        ack = _refused(running.port, adt_a01("LOST-1"))
    finally:
        running.stop()
    assert msa(ack) == ("AR", "LOST-1")
    assert err(ack)[1] == "207" and "send it again" in err(ack)[2]


def test_tls(settings: Settings, tmp_path: Path, sqlite_store: sessionmaker[Session]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    running = start_listener_thread(
        _listener_settings(settings, hl7_tls_cert=cert, hl7_tls_key=key), SUPPORTED
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with MLLPClient("127.0.0.1", running.port, ssl_context=context) as client:
            assert msa(client.send(adt_a01("TLS-1"))) == ("AA", "TLS-1")
        with connect(running.port, timeout=2.0) as plain:  # plain TCP to a TLS port gets nothing
            plain.send_raw(frame(adt_a01("PLAIN-1")))
            with pytest.raises((ConnectionError, TimeoutError)):
                plain.receive()
    finally:
        running.stop()
    assert [r.control_id for r in _rows(sqlite_store)] == ["TLS-1"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(folder: Path, name: str, ca: tuple[Path, Path], extension: str) -> tuple[Path, Path]:
    """A certificate for *name* signed by *ca* (certificate, key)."""
    cert, key, request = folder / f"{name}.pem", folder / f"{name}-key.pem", folder / f"{name}.csr"
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
             "-out", str(request))  # fmt: skip
    extensions = folder / f"{name}.ext"
    extensions.write_text(extension)
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-out", str(cert), "-extfile", str(extensions))  # fmt: skip
    return cert, key


def test_mutual_tls_admits_only_senders_with_a_certificate_of_the_ca(
    settings: Settings, tmp_path: Path, sqlite_store: sessionmaker[Session]
) -> None:
    ca = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Hospital CA",
             "-keyout", str(ca[1]), "-out", str(ca[0]))  # fmt: skip
    server = _signed(tmp_path, "localhost", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    emr = _signed(tmp_path, "emr-gateway", ca, "extendedKeyUsage=clientAuth\n")
    stranger = tmp_path / "stranger.pem", tmp_path / "stranger-key.pem"  # self-signed: not the CA's
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=stranger",
             "-keyout", str(stranger[1]), "-out", str(stranger[0]))  # fmt: skip
    running = start_listener_thread(
        _listener_settings(settings, hl7_tls_cert=server[0], hl7_tls_key=server[1], hl7_tls_client_ca=ca[0]),
        SUPPORTED,
    )

    def client_context(identity: tuple[Path, Path] | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca[0]))
        if identity is not None:
            context.load_cert_chain(*identity)
        return context

    try:
        with MLLPClient("127.0.0.1", running.port, ssl_context=client_context(emr)) as client:
            assert msa(client.send(adt_a01("MTLS-1"))) == ("AA", "MTLS-1")
        for identity in (None, stranger):  # no certificate, or one the CA did not sign: no session
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                with MLLPClient("127.0.0.1", running.port, ssl_context=client_context(identity)) as client:
                    client.send(adt_a01("MTLS-REFUSED"))
        # The command-line client presents its certificate too; the listener still serves.
        framed = tmp_path / "one.hl7"
        framed.write_bytes(adt_a01("MTLS-CLI"))
        result = subprocess.run(
            [str(Path(sys.executable).with_name("clinic")), "hl7", "send", str(framed), "--to",
             f"127.0.0.1:{running.port}", "--ca", str(ca[0]), "--cert", str(emr[0]), "--key", str(emr[1])],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "AA" in result.stdout
    finally:
        running.stop()
    assert sorted(r.control_id for r in _rows(sqlite_store)) == ["MTLS-1", "MTLS-CLI"]
