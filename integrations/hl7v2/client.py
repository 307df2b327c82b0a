"""Sending HL7 v2 messages over MLLP and judging the acknowledgement (HL7 v2.5.1 §2.9, MLLP
release 2 framing: :mod:`integrations.hl7v2.mllp`).

:func:`send_messages` is the reusable client (also for ``clinic hl7 send``): one connection, each
message sent and its acknowledgement read before the next. :func:`deliver` sends one message and
says what its delivery came to:

=============================================  ===========  ======================================
what happened                                  outcome      why
=============================================  ===========  ======================================
MSA-1 AA or CA, MSA-2 == our MSH-10            success
MSA-1 AE, AR, CE or CR                         permanent    the receiver refused the content or
                                                            the message (§2.9.2): resending the
                                                            same bytes cannot help
connection refused/reset, timeout, framing     transient    the destination is down or slow
an ACK whose MSA-2 is not our MSH-10           transient    not the answer to this message
an unreadable ACK or an unknown MSA-1          transient    a confused peer; retried, visible
a destination that is not host:port            permanent    a configuration fault
an ACK of ours (no answer expected) sent       success      nobody acknowledges an acknowledgement
=============================================  ===========  ======================================
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from clinic.messages.outbound import AttemptOutcome
from integrations.hl7v2.ack import read_ack
from integrations.hl7v2.errors import HL7Error
from integrations.hl7v2.mllp import MLLPClient, frame
from integrations.hl7v2.tables import AckCode


def send_messages(
    host: str, port: int, messages: Sequence[bytes], timeout: float = 10.0, tls: ssl.SSLContext | None = None
) -> list[bytes]:
    """Send *messages* (ER7 bytes, CR-terminated segments) over one MLLP connection; returns the
    payload of each response block, in order. Raises :class:`OSError` (refused, reset, timeout)
    or :class:`~integrations.hl7v2.errors.FramingError` (an oversized response)."""
    with MLLPClient(host, port, timeout=timeout, ssl_context=tls) as client:
        return [client.send(message) for message in messages]


def send_without_answer(
    host: str, port: int, messages: Sequence[bytes], timeout: float = 10.0, tls: ssl.SSLContext | None = None
) -> None:
    """Send acknowledgements (ACK messages): nobody acknowledges an acknowledgement (v2.5.1
    §2.9.2), so nothing is read back."""
    with MLLPClient(host, port, timeout=timeout, ssl_context=tls) as client:
        for message in messages:
            client.sock.sendall(frame(message))


def parse_destination(destination: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); :class:`ValueError` otherwise."""
    host, sep, port = destination.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"MLLP destination {destination!r} is not host:port")
    return host, int(port)


@dataclass(frozen=True)
class DeliveryResult:
    outcome: AttemptOutcome
    ack_code: str = ""
    error: str = ""


def deliver(
    destination: str,
    payload: bytes,
    control_id: str,
    *,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
    expect_ack: bool = True,
) -> DeliveryResult:
    """Send one message to *destination* and judge its acknowledgement (table above). With
    *expect_ack* false (the message is itself an ACK) a completed send is the success."""
    try:
        host, port = parse_destination(destination)
    except ValueError as exc:
        return DeliveryResult(AttemptOutcome.PERMANENT, error=str(exc))
    try:
        if not expect_ack:
            send_without_answer(host, port, [payload], timeout=timeout, tls=tls)
            return DeliveryResult(AttemptOutcome.SUCCESS)
        (response,) = send_messages(host, port, [payload], timeout=timeout, tls=tls)
    except (OSError, HL7Error) as exc:
        return DeliveryResult(AttemptOutcome.TRANSIENT, error=f"{type(exc).__name__}: {exc}"[:500])
    try:
        ack = read_ack(response)
    except (HL7Error, UnicodeError, ValueError) as exc:
        return DeliveryResult(AttemptOutcome.TRANSIENT, error=f"unreadable acknowledgement: {exc}"[:500])
    code = ack.code.strip().upper()
    if ack.acked_control_id.strip() != control_id:
        return DeliveryResult(
            AttemptOutcome.TRANSIENT,
            ack_code=code[:2],
            error=f"MSA-2 {ack.acked_control_id[:40]!r} does not acknowledge MSH-10 {control_id!r}",
        )
    try:
        answer = AckCode(code)
    except ValueError:
        return DeliveryResult(
            AttemptOutcome.TRANSIENT, ack_code=code[:2], error=f"MSA-1 {code[:8]!r} is not table 0008"
        )
    if answer.is_positive:
        return DeliveryResult(AttemptOutcome.SUCCESS, ack_code=answer.value)
    detail = ack.text or "no reason given"
    if ack.error_code:
        detail = f"{detail} (ERR-3 {ack.error_code})"
    return DeliveryResult(
        AttemptOutcome.PERMANENT, ack_code=answer.value, error=f"{answer.value}: {detail}"[:2000]
    )
