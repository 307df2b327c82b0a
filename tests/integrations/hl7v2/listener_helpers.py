"""Messages and clients for the MLLP listener tests: real sockets, real acknowledgements."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import hl7
from hl7apy.parser import parse_message
from sqlalchemy.orm import Session

from clinic.messages.models import HL7Message
from clinic.outbox.service import enqueue
from integrations.hl7v2.mllp import Frame, FrameReader, frame

#: What the listener under test accepts (the mapping's real set is part B's; the door only needs one).
SUPPORTED = frozenset({("ADT", "A01"), ("ADT", "A08"), ("ORM", "O01"), ("OMI", "O23"), ("ORU", "R01")})


def msh(
    control_id: str,
    message_type: str = "ADT^A01^ADT_A01",
    *,
    app: str = "EMR",
    facility: str = "HOSP",
    version: str = "2.5.1",
    accept_ack: str = "",
    app_ack: str = "",
    charset: str = "",
) -> str:
    fields = [
        "MSH", "^~\\&", app, facility, "CLINIC", "SMARTCLINIC", "20261122101500+0900", "",
        message_type, control_id, "P", version, "", "", accept_ack, app_ack, "", charset,
    ]  # fmt: skip
    return "|".join(fields).rstrip("|")


def _cx(patient: str) -> str:
    """PID-3 (CX): the identifier with its assigning authority; empty for no identifier at all."""
    return f"{patient}^^^HOSP^MR" if patient else ""


def adt_a01(control_id: str, *, patient: str = "P100", **header: str) -> bytes:
    return "\r".join(
        [
            msh(control_id, "ADT^A01^ADT_A01", **header),
            "EVN|A01|20261122101500+0900",
            f"PID|1||{_cx(patient)}||TEST^PATIENT||19800101|F",
            "PV1|1|I|WARD1^101^A",
        ]
    ).encode()


def orm_o01(control_id: str, *, patient: str = "P100", **header: str) -> bytes:
    return "\r".join(
        [
            msh(control_id, "ORM^O01^ORM_O01", **header),
            f"PID|1||{_cx(patient)}||TEST^PATIENT||19800101|F",
            "ORC|NW|PO-1^OCS|||SC",
            "OBR|1|PO-1^OCS||36643-5^XR Chest 2 Views^LN",
        ]
    ).encode()


def oru_r01(control_id: str, *, patient: str = "P100", observations: int = 3, **header: str) -> bytes:
    obx = [f"OBX|{i + 1}|NM|8867-4^Heart rate^LN||{70 + i}|/min|||||F" for i in range(observations)]
    return "\r".join(
        [
            msh(control_id, "ORU^R01^ORU_R01", **header),
            f"PID|1||{_cx(patient)}||TEST^PATIENT||19800101|F",
            "OBR|1||VS-1|85353-1^Vital signs panel^LN",
            *obx,
        ]
    ).encode()


class RawClient:
    """A plain socket MLLP client that can also misbehave (half frames, junk, silence)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = FrameReader(1 << 22)
        self.pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next response block; raises TimeoutError when none comes, ConnectionError on close."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the listener")
            self.pending += [b.payload for b in self.reader.feed(data) if isinstance(b, Frame)]
        return self.pending.pop(0)

    def send(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.receive()


@contextmanager
def connect(port: int, timeout: float = 10.0) -> Iterator[RawClient]:
    client = RawClient(port, timeout)
    try:
        yield client
    finally:
        client.close()


def parsed(ack: bytes):  # type: ignore[no-untyped-def]
    """The ACK parsed with hl7apy (the round trip of what we built)."""
    return parse_message(ack.decode(), find_groups=False)


def msa(ack: bytes) -> tuple[str, str]:
    message = parsed(ack)
    return message.msa.msa_1.to_er7(), message.msa.msa_2.to_er7()


def err(ack: bytes) -> tuple[str, str, str]:
    """(ERR-2 location, ERR-3.1 code, ERR-8 text) of an ACK, read with hl7apy."""
    segment = parsed(ack).err
    return (
        segment.err_2.to_er7(),
        segment.err_3.to_er7().split("^")[0],
        segment.err_8.to_er7(),
    )


#: Outbox task name the counting processor writes, one row per processed message.
COUNTED_TASK = "test.hl7_processed"


def counting_process(session: Session, message: HL7Message) -> str:
    """A stand-in for ``mapping.process_message`` that leaves one outbox row per call, written in the
    processing transaction: N rows for a message means it was processed N times."""
    enqueue(session, COUNTED_TASK, "test", {"message_id": message.id})
    return ""


def msa_fast(ack: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-2 read with python-hl7 (~50x faster than hl7apy: for clients sending many)."""
    segment = hl7.parse(ack.decode()).segment("MSA")
    return str(segment[1]), str(segment[2])
