"""Task latency and throughput per broker, side by side: the embedded ``clinicfs`` transport at
10 ms polling, kombu's own filesystem transport (default 1 s polling, and at 10 ms: issue #1551),
Redis and RabbitMQ.

    .venv/bin/python bench/task_latency.py [--samples 50] [--tasks 1000] [--only clinicfs,redis]

For each broker a real worker (``app.Worker``, solo pool, prefetch 1, acks_late: the platform's
settings from ``worker.app.create_celery``) runs in a subprocess and consumes a task that stamps
the time it started. Latency is publish → task start (one hop, wall clock, same machine), one task at
a time; throughput is N tasks published at once, first publish → last task start. Prints a markdown
table. Redis uses db 13 (flushed), RabbitMQ a throw-away vhost (rabbitmqctl).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from clinic.settings import Environment, Settings  # noqa: E402
from worker.app import ClinicCelery, create_celery  # noqa: E402

REDIS_URL = os.environ.get("TASK_LATENCY_REDIS_URL", "redis://127.0.0.1:6379/13")
RABBITMQ_URL = os.environ.get("TASK_LATENCY_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = "ingest"
TASK = "bench.stamp"


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    polling: str


SETUPS = [
    Setup("clinicfs", "embedded: worker.fs_transport (atomic)", "10 ms"),
    Setup("kombu-fs", "kombu filesystem (stock)", "1 s (default)"),
    Setup("kombu-fs-10ms", "kombu filesystem (stock)", "10 ms"),
    Setup("redis", "Redis", "push (BRPOP)"),
    Setup("rabbitmq", "RabbitMQ", "push (AMQP)"),
]


def build_app(key: str, data_dir: Path, broker: str) -> ClinicCelery:
    """The platform's Celery app for *key*, with a task that stamps its start time."""
    if key == "clinicfs":
        settings = Settings(data_dir=data_dir, environment=Environment.TEST, broker_polling_interval=0.01)
    elif key.startswith("kombu-fs"):
        settings = Settings(data_dir=data_dir, environment=Environment.TEST)
    else:
        settings = Settings(data_dir=data_dir, environment=Environment.TEST, broker_url=broker)
    app = create_celery(settings)
    if key.startswith("kombu-fs"):
        folder = data_dir / "kombu-fs"
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
        }
        if key == "kombu-fs-10ms":
            options["polling_interval"] = 0.01
        app.conf.broker_url = "filesystem://"
        app.conf.broker_transport_options = options
    stamps = data_dir / "stamps.txt"

    @app.task(name=TASK)
    def stamp(sent: float) -> None:
        started = time.time()
        with open(stamps, "a") as handle:
            handle.write(f"{sent} {started}\n")

    return app


def serve(key: str, data_dir: Path, broker: str) -> None:
    import logging

    logging.basicConfig(
        level=os.environ.get("TASK_LATENCY_LOGLEVEL", "WARNING"), format="%(asctime)s %(name)s %(message)s"
    )
    app = build_app(key, data_dir, broker)
    worker = app.Worker(
        queues=[QUEUE],
        pool="solo",
        concurrency=1,
        loglevel=os.environ.get("TASK_LATENCY_LOGLEVEL", "WARNING"),
        quiet=True,
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
    )
    worker.start()


def _stamps(path: Path) -> list[tuple[float, float]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(float(a), float(b)) for a, b in (line.split() for line in lines if line.count(" ") == 1)]


def _wait_count(path: Path, count: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_stamps(path)) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    return False


def measure(setup: Setup, samples: int, tasks: int, broker: str) -> dict[str, str]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{setup.key}-"))
    log_path = data_dir / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", setup.key, "--data-dir", str(data_dir), "--broker", broker],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    app = build_app(setup.key, data_dir, broker)
    stamps = data_dir / "stamps.txt"
    row = {"setup": setup.label, "polling": setup.polling, "p50": "-", "p95": "-", "rate": "-", "note": ""}
    try:
        # warm up: the worker is consuming once one task has come back
        app.send_task(TASK, args=[time.time()], queue=QUEUE)
        if not _wait_count(stamps, 1, proc, 60):
            row["note"] = "worker did not start"
            return row
        if setup.polling.startswith("1 s"):
            samples = min(samples, 10)  # each hop costs up to a second
        for i in range(samples):
            app.send_task(TASK, args=[time.time()], queue=QUEUE)
            if not _wait_count(stamps, 2 + i, proc, 30):
                break
            time.sleep(0.003)  # let the worker go back to polling, as between real tasks
        lat = [(b - a) * 1000 for a, b in _stamps(stamps)[1:]]
        if lat:
            q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [lat[0]] * 19
            row["p50"], row["p95"] = f"{statistics.median(lat):.1f}", f"{q[18]:.1f}"
        done_before = len(_stamps(stamps))
        first = time.time()
        with app.producer_or_acquire() as producer:
            for _ in range(tasks):
                app.send_task(TASK, args=[time.time()], queue=QUEUE, producer=producer)
        if _wait_count(stamps, done_before + tasks, proc, 300):
            last = max(b for _, b in _stamps(stamps)[done_before:])
            row["rate"] = f"{tasks / (last - first):.0f}"
        if proc.poll() is not None:
            text = log_path.read_text(errors="replace")
            reason = "JSONDecodeError" if "JSONDecodeError" in text else f"exit {proc.returncode}"
            row["note"] = f"worker died ({reason}) after {len(_stamps(stamps))} tasks"
        return row
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        app.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _rabbit_vhost() -> tuple[str, str] | None:
    if shutil.which("rabbitmqctl") is None:
        return None
    vhost = f"clinic-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    return vhost, RABBITMQ_URL.rstrip("/") + "/" + vhost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50, help="latency samples per broker")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the throughput burst")
    parser.add_argument(
        "--only", default="", help="comma-separated setups: " + ",".join(s.key for s in SETUPS)
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--broker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, Path(args.data_dir), args.broker)
        return 0
    wanted = {s for s in args.only.split(",") if s} or {s.key for s in SETUPS}
    rows = []
    for setup in SETUPS:
        if setup.key not in wanted:
            continue
        broker, vhost = "", ""
        if setup.key == "redis":
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
            broker = REDIS_URL
        elif setup.key == "rabbitmq":
            made = _rabbit_vhost()
            if made is None:
                continue
            vhost, broker = made

        print(f"measuring {setup.label}, {setup.polling} ...", file=sys.stderr, flush=True)
        try:
            rows.append(measure(setup, args.samples, args.tasks, broker))
        finally:
            if setup.key == "redis":
                redis.Redis.from_url(REDIS_URL).flushdb()
            if vhost:
                subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
    print(
        f"\nTask latency (publish → task start) and throughput; {os.cpu_count()} CPUs, solo worker, "
        f"prefetch 1, acks_late; {args.tasks} tasks per burst\n"
    )
    print("| broker / transport | polling | latency p50 ms | latency p95 ms | tasks/s | note |")
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        cells = [row[k] for k in ("setup", "polling", "p50", "p95", "rate", "note")]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
