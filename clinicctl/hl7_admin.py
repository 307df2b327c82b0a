"""``clinic hl7 send | messages | replay | process``: HL7 v2 over MLLP for integration engineers.

``send`` is a client for testing a feed (ours or anyone's): it reads a file of messages (MLLP
blocks, blank-line separated, or one after another each starting with ``MSH``), sends them one by
one with a progress bar, and prints how many were answered with each acknowledgement code and why
the refused ones were refused. Tables show identifiers and statuses, never message content.
"""

from __future__ import annotations

import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clinicctl.errors import CliError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from clinic.messages.models import HL7Message
    from clinic.settings import Settings

console = Console()
hl7_app = typer.Typer(
    help="HL7 v2 over MLLP: send a file, list stored messages, replay failures.", no_args_is_help=True
)

#: Set by :func:`register`: the CLI's settings and session factory (``clinicctl.main``).
_hooks: dict[str, Callable[..., Any]] = {}

STATUS_STYLE = {"received": "cyan", "processed": "green", "failed": "bold red", "rejected": "yellow"}
CODE_STYLE = {"AA": "green", "CA": "green", "AE": "bold red", "CE": "bold red", "AR": "red", "CR": "red"}


def register(
    app: typer.Typer,
    settings: Callable[[], Settings],
    session_factory: Callable[[Settings], sessionmaker[Session]],
) -> None:
    """Add the ``clinic hl7`` group to *app*."""
    _hooks["settings"] = settings
    _hooks["session_factory"] = session_factory
    app.add_typer(hl7_app, name="hl7")


def _sessions() -> sessionmaker[Session]:
    settings = _hooks["settings"]()
    factory: sessionmaker[Session] = _hooks["session_factory"](settings)
    return factory


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"--to must be HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def _expects_answer(payload: bytes) -> bool:
    """False when no acknowledgement will come: an ACK, or enhanced mode with MSH-15 NE."""
    from integrations.hl7v2.codec import decode
    from integrations.hl7v2.errors import MessageParseError

    try:
        header = decode(payload, "latin-1").header
    except MessageParseError:
        return True
    return header.message_code != "ACK" and header.accept_ack_type != "NE"


@hl7_app.command("send")
def send(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="File of HL7 v2 messages.")],
    to: Annotated[str, typer.Option("--to", help="HOST:PORT of the MLLP listener.")] = "127.0.0.1:2575",
    tls: Annotated[bool, typer.Option(help="Connect with TLS.")] = False,
    ca: Annotated[Path | None, typer.Option(help="CA certificate to verify the server (TLS).")] = None,
    cert: Annotated[
        Path | None, typer.Option(help="Client certificate (PEM) for a listener that asks for one.")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="Private key (PEM) of --cert.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each acknowledgement.")] = 30.0,
) -> None:
    """Send every message of FILE over MLLP and summarise the acknowledgements."""
    from clinicctl.output import progress_bar
    from integrations.hl7v2.ack import read_ack
    from integrations.hl7v2.errors import HL7Error
    from integrations.hl7v2.mllp import MLLPClient, split_file

    host, port = _address(to)
    try:
        messages = split_file(file.read_bytes())
    except ValueError as exc:
        raise CliError(f"{file}: {exc}") from None
    if not messages:
        raise CliError(f"{file}: no HL7 message found (each must start with MSH)")
    context: ssl.SSLContext | None = None
    if (cert is None) != (key is None):
        raise CliError("give both --cert and --key, or neither")
    if tls or ca is not None or cert is not None:
        try:
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
            if cert is not None and key is not None:
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"TLS set-up failed: {exc}") from None
    codes: Counter[str] = Counter()
    problems: list[tuple[int, str, str]] = []
    started = time.monotonic()
    client: MLLPClient | None = None
    with progress_bar(console) as progress:
        task = progress.add_task(f"sending to {host}:{port}", total=len(messages))
        for number, payload in enumerate(messages, 1):
            try:
                if client is None:
                    client = MLLPClient(host, port, timeout=timeout, ssl_context=context)
                if not _expects_answer(payload):
                    client.sock.sendall(b"\x0b" + payload + b"\x1c\r")
                    codes["(none expected)"] += 1
                else:
                    summary = read_ack(client.send(payload))
                    codes[summary.code or "?"] += 1
                    if summary.code not in ("AA", "CA"):
                        problems.append((number, summary.code, summary.text or summary.error_code))
            except (OSError, HL7Error) as exc:
                codes["no answer"] += 1
                problems.append((number, "-", f"{type(exc).__name__}: {exc}"))
                if client is not None:
                    client.close()
                client = None
            progress.advance(task)
    if client is not None:
        client.close()
    elapsed = time.monotonic() - started
    console.print(_summary(codes, len(messages), elapsed))
    if problems:
        console.print(_problems(problems))
        raise typer.Exit(1)


def _summary(codes: Counter[str], total: int, elapsed: float) -> Table:
    rate = total / elapsed if elapsed > 0 else 0.0
    table = Table(title=f"{total} messages in {elapsed:.1f} s ({rate:.0f}/s)", title_justify="left")
    table.add_column("acknowledgement")
    table.add_column("messages", justify="right")
    for code, count in codes.most_common():
        table.add_row(Text(code, style=CODE_STYLE.get(code, "")), str(count))
    return table


def _problems(rows: list[tuple[int, str, str]], limit: int = 50) -> Table:
    table = Table(title="Not accepted", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("code")
    table.add_column("reason")
    for number, code, reason in rows[:limit]:
        table.add_row(str(number), Text(code, style=CODE_STYLE.get(code, "")), reason)
    if len(rows) > limit:
        table.add_row("…", "", f"{len(rows) - limit} more")
    return table


def messages_table(rows: list[HL7Message]) -> Table:
    table = Table(title=f"HL7 messages ({len(rows)})", title_justify="left")
    for column in ("id", "received (UTC)", "from", "type", "control id", "status", "ack", "tries", "why"):
        table.add_column(column)
    for m in rows:
        sender = (
            f"{m.sending_application}@{m.sending_facility}" if m.sending_facility else m.sending_application
        )
        table.add_row(
            str(m.id),
            m.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            sender,
            m.message_type,
            m.control_id,
            Text(str(m.status), style=STATUS_STYLE.get(str(m.status), "")),
            m.ack_code,
            str(m.attempts),
            m.error or m.notes,
        )
    return table


@hl7_app.command("messages")
def messages(
    status: Annotated[str | None, typer.Option(help="received, processed, failed or rejected.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show (newest first).")] = 50,
) -> None:
    """Stored messages with their status and, for failures, the reason."""
    from clinic.db import unit_of_work
    from clinic.messages.models import MessageStatus
    from clinic.messages.service import list_messages, status_counts

    chosen: MessageStatus | None = None
    if status is not None:
        try:
            chosen = MessageStatus(status)
        except ValueError:
            choices = ", ".join(s.value for s in MessageStatus)
            raise CliError(f"unknown status {status!r}: choose one of {choices}") from None
    with unit_of_work(_sessions()) as session:
        rows = list(list_messages(session, chosen, limit=limit))
        counts = status_counts(session)
    console.print(messages_table(rows))
    console.print("  ".join(f"{name}: {count}" for name, count in sorted(counts.items())) or "no messages")


@hl7_app.command("replay")
def replay(message_ids: Annotated[list[int], typer.Argument(help="Ids of failed messages.")]) -> None:
    """Put failed messages back in line; the processor (in the worker) takes them again."""
    from clinic.db import unit_of_work
    from clinic.messages.service import MessageNotFoundError, ReplayNotAllowedError
    from clinic.messages.service import replay as replay_message

    with unit_of_work(_sessions()) as session:
        for message_id in message_ids:
            try:
                replay_message(session, message_id)
            except (MessageNotFoundError, ReplayNotAllowedError) as exc:
                raise CliError(str(exc)) from None
    console.print(f"{len(message_ids)} message(s) queued for processing again")


@hl7_app.command("process")
def process(
    timeout: Annotated[float, typer.Option(help="Stop after this many seconds.")] = 600.0,
) -> None:
    """Process waiting messages now, in the foreground, until none is left (the worker does this
    continuously)."""
    from integrations.hl7v2.processor import Processor, load_mapping

    settings = _hooks["settings"]()
    processor = Processor(
        _sessions(),
        load_mapping(),
        ack_destinations=settings.hl7_ack_destinations,
        timezone=settings.hl7_timezone,
    )
    done = processor.run_until_idle(timeout)
    console.print(f"processed {done.processed}, failed {done.failed}")


OUTBOUND_STYLE = {"pending": "cyan", "sent": "green", "failed": "bold red", "held": "yellow"}


@hl7_app.command("outbound")
def outbound(
    status: Annotated[str | None, typer.Option(help="pending, sent, failed or held.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show (newest first).")] = 50,
) -> None:
    """Messages we send (AI results as ORU^R01, application ACKs): status, attempts, last error."""
    from clinic.db import unit_of_work
    from clinic.messages.outbound import OutboundStatus, list_outbound

    if status is not None and status not in {s.value for s in OutboundStatus}:
        choices = ", ".join(s.value for s in OutboundStatus)
        raise CliError(f"unknown status {status!r}: choose one of {choices}")
    columns = ("id", "created", "type", "subject", "destination", "status", "attempts", "ACK", "last error")
    table = Table(*columns)
    with unit_of_work(_sessions()) as session:
        for row in list_outbound(session, status, limit=limit):
            table.add_row(
                str(row.id),
                row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                row.message_type,
                f"{row.subject_kind} {row.subject_id or ''}".strip(),
                row.destination or "-",
                Text(row.status, style=OUTBOUND_STYLE.get(row.status, "")),
                str(row.attempts),
                Text(row.ack_code, style=CODE_STYLE.get(row.ack_code, "")),
                row.last_error[:120],
            )
    console.print(table)
