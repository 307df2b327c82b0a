"""The embedded broker (worker.fs_transport): atomic message files, one consumer per message,
priorities, and a real worker polling every 10 ms under a stream of publishes (kombu issue #1551).
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from clinic.ai.service import ANALYSE_STUDY_TASK
from clinic.settings import Environment, Settings
from tests.conftest import REPO_ROOT
from tests.worker.conftest import Stack, make_stack, wait_for
from worker import fs_transport
from worker.app import create_celery


def _connection(root: Path, **options: object) -> Connection:
    fs_transport.register()
    return Connection(
        f"{fs_transport.ALIAS}://",
        transport_options={**fs_transport.folder_options(root), "polling_interval": 0.01, **options},
    )


def _queue(name: str = "q") -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def test_put_never_shows_a_partial_file(tmp_path: Path) -> None:
    """Readers racing a writer of large messages only ever see whole files in the queue folder."""
    conn = _connection(tmp_path)
    channel = conn.channel()
    queue_dir = tmp_path / "queue"
    big = "x" * 512_000  # large, so that a non-atomic write is caught mid-way
    stop = threading.Event()
    seen_partial: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            for name in os.listdir(queue_dir):
                try:
                    data = (queue_dir / name).read_bytes()
                except FileNotFoundError:
                    continue
                try:
                    json.loads(data)
                except ValueError:
                    seen_partial.append(name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(60):
            channel._put("q", {"body": big, "i": i, "properties": {"priority": 0}})
            if i % 10 == 9:
                for name in os.listdir(queue_dir):
                    (queue_dir / name).unlink(missing_ok=True)
    finally:
        stop.set()
        watcher.join()
        conn.release()
    assert seen_partial == []
    assert not os.listdir(tmp_path / "tmp"), "temporary files left behind"


def test_each_message_is_taken_by_exactly_one_consumer(tmp_path: Path) -> None:
    conn = _connection(tmp_path, fsync=False)
    total = 600
    channel = conn.channel()
    for i in range(total):
        channel._put("q", {"i": i, "properties": {}})
    conn.release()

    taken: list[list[int]] = [[], [], []]
    errors: list[BaseException] = []

    def consume(index: int) -> None:
        consumer_conn = _connection(tmp_path)
        try:
            consumer_channel = consumer_conn.channel()
            while True:
                try:
                    payload = consumer_channel._get("q")
                except queue.Empty:
                    return
                except Exception as exc:
                    errors.append(exc)
                    return
                taken[index].append(payload["i"])
        finally:
            consumer_conn.release()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    everything = sorted(i for part in taken for i in part)
    assert everything == list(range(total)), "a message was lost or delivered twice"
    assert not os.listdir(tmp_path / "processed")


def test_higher_priority_is_delivered_first(tmp_path: Path) -> None:
    conn = _connection(tmp_path)
    received: list[int] = []
    with conn:
        producer = Producer(conn.channel())
        for i, priority in enumerate([0, 2, 0, 9, 1, 2]):
            producer.publish(
                {"i": i, "p": priority}, exchange="", routing_key="q", declare=[_queue()], priority=priority
            )

        def on_message(body: dict[str, int], message: object) -> None:
            received.append(body["p"])
            message.ack()  # type: ignore[attr-defined]

        with Consumer(conn, [_queue()], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 10
            while len(received) < 6 and time.monotonic() < deadline:
                conn.drain_events(timeout=5)
    assert received == [9, 2, 2, 1, 0, 0]


def test_exchange_table_survives_concurrent_declares(tmp_path: Path) -> None:
    """Binds from several processes at once to one exchange leave a whole, complete table."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]);"
        "from kombu import Exchange, Queue;"
        "from tests.worker.test_fs_transport import _connection;"
        "conn = _connection(Path(sys.argv[1])); ch = conn.channel(); ex = Exchange('shared', type='direct');"
        "[Queue(f'q{i}', ex, routing_key=f'q{i}').bind(ch).declare()"
        " for i in range(int(sys.argv[3]), int(sys.argv[3]) + 20)]"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(REPO_ROOT), str(start)])
        for start in (0, 20, 40, 60)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    conn = _connection(tmp_path)
    table = conn.channel().get_table("shared")
    conn.release()
    assert sorted(entry.queue for entry in table) == sorted(f"q{i}" for i in range(80))


@pytest.mark.slow
def test_worker_polling_at_10ms_survives_a_stream_of_publishes(
    request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path, stacks: list[Stack]
) -> None:
    """kombu #1551: with kombu's own transport a worker polling every 10 ms reads a half-written
    file and dies with JSONDecodeError. Here 1,500 tasks (jobs that do not exist: each is a quick
    no-op) are published from two processes while the worker consumes: it must take all of them."""
    stack = make_stack(request, tmp_path, "embedded", demo_models_dir, broker_polling_interval=0.01)
    stacks.append(stack)
    worker = stack.start_worker("--no-relay")
    assert stack.settings.broker_polling_interval == 0.01
    per_process = 750
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from clinic.settings import Settings; from worker.app import create_celery;"
        f"app = create_celery(Settings(data_dir=sys.argv[2], environment='test'));"
        f"[app.send_task({ANALYSE_STUDY_TASK!r}, kwargs={{'job_id': 10**9 + i}}, queue='inference.cpu')"
        f" for i in range({per_process})]"
    )
    publishers = [
        subprocess.Popen([sys.executable, "-c", code, str(REPO_ROOT), str(stack.settings.data_dir)])
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in publishers] == [0, 0]

    succeeded = re.compile(r"Task clinic\.analyse_study\[[^\]]+\] succeeded")
    wait_for(
        lambda: worker.alive_or_fail() and len(succeeded.findall(worker.log())) >= 2 * per_process,
        300,
        "the worker to consume every message",
        interval=0.5,
    )
    log = worker.log()
    assert "JSONDecodeError" not in log and "Traceback" not in log
    assert len(succeeded.findall(log)) == 2 * per_process
    assert not [n for n in os.listdir(stack.settings.broker_dir / "queue") if n.endswith(".msg")]
    assert worker.terminate() == 0


def test_create_celery_embedded_uses_the_atomic_transport(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, environment=Environment.TEST, broker_polling_interval=0.01)
    app = create_celery(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0)
        assert isinstance(conn.transport, fs_transport.Transport)
        assert conn.transport.polling_interval == 0.01
    assert app.conf.worker_enable_remote_control is False
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
