"""HL7 v2 over MLLP: acknowledged messages per second, our listener against a bare MLLP server.

    .venv/bin/python bench/mllp_ack.py [--seconds 5] [--clients 1,8] [--db sqlite,postgres]

Servers, each in its own process, side by side in one run:

* ``bare``: an asyncio MLLP server (below, ~30 lines) that only cuts frames and answers one fixed
  ACK: the ceiling of Python asyncio on this machine (measured here before: ~8,000/s with one
  client, ~19,600/s with eight);
* ``ours (sqlite)`` / ``ours (postgres)``: :func:`integrations.hl7v2.listener.run_listener`, the
  process ``clinic up`` runs: decode, check MSH, build the ACK (hl7apy template), store the raw
  message durably (SQLite WAL synchronous=FULL / a PostgreSQL commit, group commit of concurrent
  arrivals), then answer.

Clients are separate processes (one connection each, no GIL shared with the server or with each
other) that send a ~450-byte ADT^A01 and wait for its ACK, in a loop, for ``--seconds``; every ACK
is checked (MSA-1 AA and MSA-2 = the control id sent). Prints messages/s and ours/bare as a markdown
table. ``--diagnose`` adds our listener on SQLite with synchronous=OFF (no fsync), which separates
the cost of durability from the cost of the code, and with the commit handed to a database thread
(``GroupCommitter(threaded=True)``) instead of run in the event loop.

The machine must be otherwise idle for figures worth quoting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_DSN = os.environ.get(
    "CLINIC_BENCH_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_TEMPLATE = os.environ.get("CLINIC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
SB, EB = b"\x0b", b"\x1c\r"
FIXED_ACK = b"MSH|^~\\&|CLINIC|SMARTCLINIC|EMR|HOSP|20261122000000||ACK^A01^ACK|1|P|2.5.1\rMSA|AA|1"
SUPPORTED = frozenset({("ADT", "A01")})
VARIANTS = {
    "": "durable before ACK",
    "--no-fsync": "synchronous=OFF (diagnosis: the cost of the code alone)",
    "--threaded": "durable, commit on a database thread (diagnosis)",
}


def message(control_id: str) -> bytes:
    return (
        "MSH|^~\\&|EMR|HOSP|CLINIC|SMARTCLINIC|20261122101500+0900||ADT^A01^ADT_A01|"
        f"{control_id}|P|2.5.1\r"
        "EVN|A01|20261122101500+0900\r"
        "PID|1||8007421^^^HOSP^MR||TEST^PATIENT^^^^^L||19900312|F|||22 Teheran-ro^^Seoul^^06236^KOR^H\r"
        "PV1|1|I|WARD3^301^A^HOSP|E|||D0143^PARK^SEOYEON^^^DR|||MED||||7|||D0143^PARK^SEOYEON^^^DR|IN|"
        "V2026-11-0042^^^HOSP^VN\r"
        "DG1|1||J18.9^Pneumonia, unspecified organism^I10||20261122|A"
    ).encode()


# --- servers ---------------------------------------------------------------------------------------


async def _bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The bare server: frames in, one fixed ACK out per frame."""
    buffer = b""
    response = SB + FIXED_ACK + EB
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := await reader.read(65536):
        buffer += data
        while (end := buffer.find(EB)) >= 0:
            buffer = buffer[end + 2 :]
            writer.write(response)
        await writer.drain()
    writer.close()


def serve_bare(port: int) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_bare, "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_ours(port: int, database_url: str, data_dir: str, no_fsync: bool, threaded: bool) -> None:
    from sqlalchemy import event

    from clinic import db
    from clinic.settings import Environment, Settings
    from integrations.hl7v2.listener import run_listener

    if no_fsync:  # diagnosis only: SQLite without durability
        original = db.make_engine

        def make_engine(url: str, **kwargs: object):  # type: ignore[no-untyped-def]
            engine = original(url, **kwargs)

            @event.listens_for(engine, "connect")
            def _off(conn, _record):  # type: ignore[no-untyped-def]
                conn.execute("PRAGMA synchronous=OFF")

            return engine

        import integrations.hl7v2.listener as listener_module

        listener_module.make_engine = make_engine  # type: ignore[assignment]
    import logging

    logging.basicConfig(level=logging.INFO, format="    server: %(message)s")
    settings = Settings(
        data_dir=Path(data_dir),
        database_url=database_url,
        environment=Environment.TEST,
        mllp_host="127.0.0.1",
        mllp_port=port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_listener(settings, SUPPORTED, stop, threaded=threaded)


# --- clients ---------------------------------------------------------------------------------------


def client(port: int, prefix: str, seconds: float, start_at: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Send, wait for the ACK, check it, again, until the time is up; report the count."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.monotonic() + seconds
    count, buffer = 0, b""
    while time.monotonic() < deadline:
        control_id = f"{prefix}{count}"
        sock.sendall(SB + message(control_id) + EB)
        while (end := buffer.find(EB)) < 0:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed")
            buffer += data
        ack, buffer = buffer[1:end], buffer[end + 2 :]
        if b"\rMSA|AA|" not in ack:
            raise AssertionError(f"not accepted: {ack[:200]!r}")
        if not (FIXED_ACK == ack or f"MSA|AA|{control_id}".encode() in ack):
            raise AssertionError(f"MSA-2 is not {control_id}")
        count += 1
    sock.close()
    out.put(count)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, clients: int, seconds: float, pid: int) -> tuple[float, float]:
    """(acknowledged messages per second, server CPU µs per message)."""
    cpu_before = cpu_seconds(pid)
    rate = _measure(port, clients, seconds)
    return rate, (cpu_seconds(pid) - cpu_before) / (rate * seconds) * 1e6


def _measure(port: int, clients: int, seconds: float) -> float:
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    run = uuid.uuid4().hex[:6]
    start_at = time.time() + 0.5
    procs = [
        mp.Process(target=client, args=(port, f"{run}-{n}-", seconds, start_at, out)) for n in range(clients)
    ]
    for proc in procs:
        proc.start()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise RuntimeError("a client failed")
    return total / seconds


# --- orchestration ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, __file__, *argv, "--port", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {argv} did not start")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    from clinic.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{folder / 'bench.db'}"
        upgrade(url)
        yield url
        return
    import psycopg

    name = f"clinic_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_URL_TEMPLATE.format(name=name)
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="sending time per cell (default 5)")
    parser.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated")
    parser.add_argument("--db", default="sqlite,postgres", help="stores: sqlite, postgres")
    parser.add_argument("--diagnose", action="store_true", help="add ours on SQLite without fsync")
    parser.add_argument("--serve", choices=["bare", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threaded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "bare":
        serve_bare(args.port)
        return
    if args.serve == "ours":
        serve_ours(args.port, args.database_url, args.data_dir, args.no_fsync, args.threaded)
        return

    clients = [int(c) for c in args.clients.split(",")]
    stores = [s.strip() for s in args.db.split(",") if s.strip()]
    rows: list[tuple[str, dict[int, tuple[float, float]]]] = []
    port = free_port()
    with server(["--serve", "bare"], port) as proc:
        label = "bare asyncio MLLP (fixed ACK, no store)"
        rows.append((label, {n: measure(port, n, args.seconds, proc.pid) for n in clients}))
    cells = [(s, "") for s in stores]
    if args.diagnose:
        cells += [("sqlite", "--no-fsync"), ("sqlite", "--threaded")]
    for kind, variant in cells:
        with tempfile.TemporaryDirectory(prefix="mllp-bench-") as tmp, database(kind, Path(tmp)) as url:
            port = free_port()
            argv = ["--serve", "ours", "--database-url", url, "--data-dir", tmp]
            with server([*argv, *([variant] if variant else [])], port) as proc:
                label = f"ours, {kind}, " + VARIANTS[variant]
                rows.append((label, {n: measure(port, n, args.seconds, proc.pid) for n in clients}))
    print_table(rows, clients, args.seconds)


def print_table(
    rows: list[tuple[str, dict[int, tuple[float, float]]]], clients: list[int], seconds: float
) -> None:
    bare = rows[0][1]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"\nMLLP acknowledged messages/s ({seconds:.0f} s per cell; {machine})\n")
    names = [f"{n} client{'s' if n > 1 else ''}" for n in clients]
    columns = [
        *names,
        *(f"ours/bare {name}" for name in names),
        *(f"server CPU µs/msg {name}" for name in names),
    ]
    print(f"| server | {' | '.join(columns)} |")
    print("|---" * (1 + len(columns)) + "|")
    for label, cells in rows:
        rates = [f"{cells[n][0]:,.0f}" for n in clients]
        ratios = [f"{cells[n][0] / bare[n][0]:.2f}" for n in clients]
        cpu = [f"{cells[n][1]:.0f}" for n in clients]
        print(f"| {label} | {' | '.join([*rates, *ratios, *cpu])} |")


if __name__ == "__main__":
    main()
