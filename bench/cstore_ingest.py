"""C-STORE ingest: dcmtk's storescp against our SCP, side by side, with the same storescu.

    .venv/bin/python bench/cstore_ingest.py [--count 240] [--db sqlite|postgres|both] [--rounds 3]

Generates ``--count`` CT instances (~0.5 MB each: pydicom's CT_small upscaled to 512×512, one
study, one series, unique SOP Instance UIDs), then for each socket configuration

* ``default``: no socket options set (Nagle on, dcmtk's default; our SCP started with
  ``tcp_nodelay=False``), and
* ``TCP_NODELAY``: ``TCP_NODELAY=1`` in the environment of both ends (dcmtk honours it) and
  TCP_NODELAY on our accepted sockets,

sends them with one ``storescu +sd`` association to (a) ``storescp`` writing into a temporary folder
(no fsync: dcmtk does not make files durable) and (b) our SCP, which makes each file durable
(fsync of the file and its folder) and commits its row before it answers. Prints instances/s
(median of ``--rounds``), the receiver's CPU per instance, and ours/dcmtk like with like, as a
markdown table for docs/benchmarks.md. ``--diagnose`` adds a row for our SCP with fsync turned
off (files and SQLite), which separates the cost of durability from the cost of the code.

The machine must be otherwise idle for figures worth quoting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_DSN = os.environ.get(
    "CLINIC_BENCH_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_TEMPLATE = os.environ.get("CLINIC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
CALLED_AE = "BENCH"


# --- data -------------------------------------------------------------------------------------


def generate_ct(folder: Path, count: int) -> int:
    """*count* CT instances of 512×512×16 bit (~0.5 MB) in *folder*; returns the size of one."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    pixels = ds.pixel_array
    ds.PixelData = np.kron(pixels, np.ones((4, 4), dtype=pixels.dtype)).tobytes()
    ds.Rows, ds.Columns = 512, 512
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = "BENCH0001", "BENCH^CT"
    for index in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.save_as(folder / f"ct{index:05d}.dcm", enforce_file_format=True)
    return (folder / "ct00000.dcm").stat().st_size


# --- processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


@dataclass
class Run:
    rate: float
    cpu_ms: float


def _send(port: int, folder: Path, env: dict[str, str], receiver: subprocess.Popen[bytes], count: int) -> Run:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("dcmtk's storescu is not installed")
    cpu0 = _cpu_seconds(receiver.pid)
    started = time.perf_counter()
    sent = subprocess.run(
        [storescu, "+sd", "-aec", CALLED_AE, "127.0.0.1", str(port), str(folder)],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(receiver.pid) - cpu0
    if sent.returncode != 0:
        raise SystemExit(f"storescu failed: {sent.stderr[-2000:]}")
    return Run(rate=count / elapsed, cpu_ms=cpu * 1000 / count)


def run_dcmtk(folder: Path, count: int, nodelay: bool) -> Run:
    storescp = shutil.which("storescp")
    if storescp is None:
        raise SystemExit("dcmtk's storescp is not installed")
    env = _env(nodelay)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-storescp-") as out:
        proc = subprocess.Popen(
            [storescp, "-od", out, "-aet", CALLED_AE, str(port)], env=env, stdout=subprocess.DEVNULL
        )
        try:
            _wait_port(port, proc)
            result = _send(port, folder, env, proc, count)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        stored = len(list(Path(out).iterdir()))
    if stored != count:
        raise SystemExit(f"storescp stored {stored} of {count} files")
    return result


@contextlib.contextmanager
def database(kind: str, data_dir: Path) -> Iterator[str]:
    """A fresh, migrated database URL: SQLite in *data_dir*, or a new PostgreSQL database."""
    from clinic.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{data_dir / 'clinic.db'}"
        upgrade(url)
        yield url
        return
    import psycopg

    name = f"clinic_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL_TEMPLATE.format(name=name)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _count_rows(url: str) -> int:
    from sqlalchemy import func, select

    from clinic.db import make_engine, make_session_factory, unit_of_work
    from clinic.imaging.models import Instance

    engine = make_engine(url)
    try:
        with unit_of_work(make_session_factory(engine)) as session:
            return int(session.scalar(select(func.count(Instance.id))) or 0)
    finally:
        engine.dispose()


def run_ours(folder: Path, count: int, nodelay: bool, db: str, *, durable: bool = True) -> Run:
    env = _env(nodelay)
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp:
        data_dir = Path(tmp) / "var"
        data_dir.mkdir()
        with database(db, data_dir) as url:
            port = _free_port()
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--database-url",
                url,
            ]
            if not nodelay:
                command.append("--nagle")
            if not durable:
                command.append("--no-fsync")
            proc = subprocess.Popen(command, env=env)
            try:
                _wait_port(port, proc)
                result = _send(port, folder, env, proc, count)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            rows = _count_rows(url)
            files = sum(1 for p in (data_dir / "dicom").rglob("*.dcm"))
    if rows != count or files != count:
        raise SystemExit(f"our SCP stored {files} files and {rows} rows of {count}")
    return result


# --- the SCP process --------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Run our SCP in this process until SIGTERM (the receiver side of the benchmark)."""
    import logging

    from clinic.settings import Environment, Settings
    from integrations.dicom.scp import start_scp

    logging.basicConfig(level=logging.WARNING)
    settings = Settings(
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        environment=Environment.TEST,
        dicom_host="127.0.0.1",
        dicom_port=args.port,
        dicom_ae=CALLED_AE,
    )
    settings.ensure_dirs()
    session_factory = None
    if args.no_fsync:  # diagnosis only: what the code costs without durability
        from sqlalchemy import event

        from clinic.db import make_engine, make_session_factory

        os.fsync = lambda fd: None  # this process only: the files are not made durable
        engine = make_engine(settings.resolved_database_url)
        if settings.resolved_database_url.startswith("sqlite"):
            event.listen(engine, "connect", lambda conn, _r: conn.execute("PRAGMA synchronous=OFF"))
        else:
            event.listen(engine, "connect", lambda conn, _r: conn.execute("SET synchronous_commit = off"))
        session_factory = make_session_factory(engine)
    server = start_scp(
        settings, session_factory, tcp_nodelay=not args.nagle, fast_path=not args.stock_pynetdicom
    )
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        time.sleep(0.1)
    server.shutdown()


# --- report -----------------------------------------------------------------------------------


def _median(runs: list[Run]) -> Run:
    return Run(rate=statistics.median(r.rate for r in runs), cpu_ms=statistics.median(r.cpu_ms for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=240, help="CT instances per run (default 240)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument("--diagnose", action="store_true", help="add our SCP without fsync")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--nagle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stock-pynetdicom", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    databases = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    with tempfile.TemporaryDirectory(prefix="bench-ct-") as tmp:
        folder = Path(tmp)
        size = generate_ct(folder, args.count)
        print(
            f"{args.count} CT instances of {size / 1e6:.2f} MB, {args.rounds} round(s); "
            f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
        )
        rows: list[tuple[str, str, str, Run, Run | None]] = []
        for nodelay in (False, True):
            label = "TCP_NODELAY=1 both ends" if nodelay else "default (Nagle on)"
            cells: dict[str, list[Run]] = {}
            for _ in range(args.rounds):
                cells.setdefault("dcmtk", []).append(run_dcmtk(folder, args.count, nodelay))
                for db in databases:
                    cells.setdefault(db, []).append(run_ours(folder, args.count, nodelay, db))
                    if args.diagnose:
                        cells.setdefault(f"{db}-nofsync", []).append(
                            run_ours(folder, args.count, nodelay, db, durable=False)
                        )
                print(f"  {label}: round done", file=sys.stderr)
            dcmtk = _median(cells["dcmtk"])
            rows.append(("dcmtk storescp (writes files, no fsync)", label, "no", dcmtk, None))
            for db in databases:
                rows.append(
                    (
                        f"our SCP ({db}; fsync file + folder, commit row)",
                        label,
                        "yes",
                        _median(cells[db]),
                        dcmtk,
                    )
                )
                if args.diagnose:
                    rows.append(
                        (
                            f"our SCP ({db}; fsync off, diagnosis)",
                            label,
                            "no",
                            _median(cells[f"{db}-nofsync"]),
                            dcmtk,
                        )
                    )

    print()
    print(
        "| Receiver | Socket options | Durable before ack | Instances/s"
        " | Receiver CPU ms/instance | Ours / dcmtk |"
    )
    print("|---|---|---|---:|---:|---:|")
    for receiver, label, durable, run, reference in rows:
        ratio = f"{run.rate / reference.rate:.2f}" if reference else ""
        print(f"| {receiver} | {label} | {durable} | {run.rate:.0f} | {run.cpu_ms:.2f} | {ratio} |")
    print()
    print(
        f"storescu +sd (one association), {args.count} × 0.5 MB CT, explicit VR LE; median of {args.rounds}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end; "
        f"Python {platform.python_version()}."
    )


if __name__ == "__main__":
    main()
