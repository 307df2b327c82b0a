"""Fully processed HL7 v2 messages per second: an 11-OBX IHE PCD-01 ORU^R01 (vital signs) read,
mapped to patients and observations, stored and committed; against parsing alone with hl7apy.

    .venv/bin/python bench/hl7_processing.py [--messages 2000] [--patients 50] [--db-url URL]

The messages are the test sample ``tests/integrations/hl7v2/messages/oru_r01_pcd01_mdc.hl7`` with a
new control id, one of ``--patients`` patients and its own observation times each (so every message
adds 10 observation rows). They are stored first as the listener stores them (``HL7Message``,
RECEIVED; not timed), then processed:

* **processor**: the production loop, ``integrations.hl7v2.processor.Processor`` (one process,
  batches of up to 200 messages or 100 ms per transaction, a savepoint per message) calling
  ``integrations.hl7v2.mapping.process_message``;
* **per message, N processes**: one unit of work (one commit) per message, the slow trickle-feed
  case, in ``--workers`` processes at once (each its own patients, so they never wait on a row).

References on one core: hl7apy 1.3.5 ``parse_message`` (default, the naive choice), hl7apy with
``find_groups=False`` and tolerant validation, python-hl7 ``hl7.parse``, and the mappings' reader
(``integrations.hl7v2.mapping.parse.Message``). Prints a markdown table; SQLite (WAL,
synchronous=FULL, the embedded default) unless ``--db-url`` names a PostgreSQL database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import func, insert, select  # noqa: E402

from clinic.db import make_engine, make_session_factory, unit_of_work  # noqa: E402
from clinic.messages.models import HL7Message, MessageStatus  # noqa: E402
from clinic.migrate import upgrade  # noqa: E402
from clinic.observations.models import Observation  # noqa: E402

SAMPLE = REPO_ROOT / "tests" / "integrations" / "hl7v2" / "messages" / "oru_r01_pcd01_mdc.hl7"
TIMES = ("20261122083000", "20261122082900", "20261122082800")
BASE = dt.datetime(2026, 11, 22, 8, 30)


def make_messages(count: int, patients: int) -> list[bytes]:
    text = SAMPLE.read_text("utf-8").replace("\n", "\r")
    messages = []
    for i in range(count):
        patient = i % patients
        body = text.replace("PCD0001842", f"BENCH{i:08d}").replace("8007421^", f"B{patient:06d}^")
        body = body.replace("900312-2345678^", f"900312-{patient:07d}^")
        for offset, stamp in enumerate(TIMES):  # each message reports its own minute
            moment = BASE + dt.timedelta(minutes=i, seconds=-60 * offset)
            body = body.replace(stamp, moment.strftime("%Y%m%d%H%M%S"))
        messages.append(body.encode("utf-8"))
    return messages


def store(url: str, messages: list[bytes]) -> list[int]:
    engine = make_engine(url)
    rows = [
        {
            "raw": raw,
            "charset": "utf-8",
            "sending_application": "BENCH",
            "control_id": f"{i:08d}",
            "message_type": "ORU^R01^ORU_R01",
            "version": "2.6",
            "status": MessageStatus.RECEIVED,
            "received_at": dt.datetime.now(dt.UTC),
        }
        for i, raw in enumerate(messages)
    ]
    with engine.begin() as conn:
        conn.execute(insert(HL7Message), rows)
        ids = list(conn.execute(select(HL7Message.id).order_by(HL7Message.id)).scalars())
    engine.dispose()
    return ids


def fresh_database(args: argparse.Namespace, folder: Path, name: str) -> str:
    if args.db_url:
        import psycopg

        admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = args.db_url.rsplit("/", 1)[0] + "/" + name
    else:
        url = f"sqlite:///{folder / name}.db"
    upgrade(url)
    return url


def rate(fn: Callable[[], object], count: int) -> float:
    fn()  # warm (imports, caches)
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def parse_rates(raw: bytes) -> dict[str, float]:
    import hl7
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    from integrations.hl7v2.mapping.parse import Message

    text = raw.decode("utf-8")
    return {
        "hl7apy parse_message (default)": rate(lambda: parse_message(text), 40),
        "hl7apy find_groups=False, tolerant": rate(
            lambda: parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT), 40
        ),
        "python-hl7 hl7.parse": rate(lambda: hl7.parse(text), 400),
        "mapping reader (parse.Message)": rate(lambda: Message(text, "utf-8"), 4000),
    }


def run_processor(url: str) -> tuple[float, int]:
    from integrations.hl7v2.mapping import process_message
    from integrations.hl7v2.processor import Processor

    factory = make_session_factory(make_engine(url))
    processor = Processor(factory, process_message)
    start = time.perf_counter()
    done = processor.run_until_idle(timeout=600)
    return time.perf_counter() - start, done.processed


def _per_message_worker(url: str, ids: list[int], barrier: object) -> None:
    from clinic.messages.service import mark_processed
    from integrations.hl7v2.mapping import process_message

    factory = make_session_factory(make_engine(url))
    barrier.wait()  # type: ignore[attr-defined]
    for message_id in ids:
        with unit_of_work(factory) as session:
            message = session.get(HL7Message, message_id)
            assert message is not None
            mark_processed(message, process_message(session, message))


def run_per_message(url: str, ids: list[int], patients: int, workers: int) -> float:
    """*workers* processes, one commit per message; patients split between processes."""
    groups: list[list[int]] = [[] for _ in range(workers)]
    for index, message_id in enumerate(ids):
        groups[(index % patients) % workers].append(message_id)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(workers + 1)
    procs = [context.Process(target=_per_message_worker, args=(url, g, barrier)) for g in groups]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.perf_counter()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"a worker failed ({proc.exitcode})")
    return time.perf_counter() - start


def check(url: str, expected_messages: int) -> None:
    engine = make_engine(url)
    with unit_of_work(make_session_factory(engine)) as session:
        processed = session.scalar(
            select(func.count()).select_from(HL7Message).where(HL7Message.status == MessageStatus.PROCESSED)
        )
        observations = session.scalar(select(func.count()).select_from(Observation))
    engine.dispose()
    if processed != expected_messages or observations != 10 * expected_messages:
        raise SystemExit(
            f"expected {expected_messages} processed, got {processed}; observations {observations}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db-url", default="", help="a PostgreSQL URL (its database name is replaced)")
    args = parser.parse_args()
    messages = make_messages(args.messages, args.patients)
    folder = Path(tempfile.mkdtemp(prefix="hl7bench-"))
    stamp = time.strftime("%H%M%S")

    parsing = parse_rates(messages[0])
    url = fresh_database(args, folder, f"hl7bench_proc_{stamp}")
    store(url, messages)
    seconds, processed = run_processor(url)
    check(url, len(messages))
    processor_rate = processed / seconds

    url2 = fresh_database(args, folder, f"hl7bench_each_{stamp}")
    ids = store(url2, messages)
    each_seconds = run_per_message(url2, ids, args.patients, args.workers)
    check(url2, len(messages))
    each_rate = len(messages) / each_seconds

    naive = parsing["hl7apy parse_message (default)"]
    backend = "PostgreSQL" if args.db_url else "SQLite (WAL, synchronous=FULL)"
    print(f"\n11-OBX PCD-01 ORU^R01, {len(messages)} messages, {args.patients} patients, {backend}\n")
    print("| what | messages/s | vs hl7apy parse alone (1 core) |")
    print("|---|---:|---:|")
    for name, value in parsing.items():
        print(f"| parse only, 1 core: {name} | {value:,.0f} | {value / naive:.1f}x |")
    print(
        f"| fully processed: processor loop (1 process, batched commits) | {processor_rate:,.0f} | "
        f"{processor_rate / naive:.1f}x |"
    )
    print(
        f"| fully processed: 1 commit per message, {args.workers} processes | {each_rate:,.0f} | "
        f"{each_rate / naive:.1f}x |"
    )


if __name__ == "__main__":
    main()
