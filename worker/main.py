"""Starting a worker: the Celery consumer plus, in the same process, the outbox relay.

``run_worker`` starts Celery programmatically (``app.Worker``); the relay runs in a thread owned by a
worker bootstep, so it starts after the pool and stops with the worker: SIGTERM or SIGINT (Celery's
own handlers) make a warm shutdown - the running task finishes, the relay thread is stopped and
joined, the process exits 0. ``run_relay_forever`` runs the relay alone (several may run at once).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from celery import bootsteps
from celery.signals import worker_process_init

from clinic.settings import Settings
from worker.app import ALL_QUEUES, ClinicCelery, broker_kind, create_celery
from worker.hl7 import HL7ProcessorStep
from worker.relay import run_relay

log = logging.getLogger(__name__)

POOLS = ("solo", "prefork", "threads")


class RelayStep(bootsteps.StartStopStep):
    """Worker bootstep: the outbox relay thread, started after the pool, stopped before exit."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, clinic_relay: bool = False, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.enabled = bool(clinic_relay)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        app = parent.app
        self._stop.clear()
        self._thread = threading.Thread(
            target=run_relay, args=(app.clinic_settings, app, self._stop), name="outbox-relay", daemon=True
        )
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None

    terminate = stop
    shutdown = stop


def _warm_models(app: ClinicCelery) -> None:
    """prefork: each pool process starts loading the models as soon as it is forked.

    In a thread: billiard kills a child that has not reported itself up within
    ``worker_proc_alive_timeout`` (4 s), and loading torch + monai + the bundles takes longer. A
    task that arrives meanwhile waits for the registry (its lock) instead of loading it again.
    """
    from worker.tasks import process_context

    def load() -> None:
        try:
            process_context(app.clinic_settings).registry()
        except Exception:  # the first task reports it on its job
            log.exception("model registry failed to load in pool process %s", os.getpid())

    def warm(**_: Any) -> None:
        threading.Thread(target=load, name="warm-models", daemon=True).start()

    worker_process_init.connect(warm, weak=False)


def run_worker(
    settings: Settings,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    pool: str = "solo",
    with_relay: bool = True,
    loglevel: str = "INFO",
) -> int:
    """Run a Celery worker (and the relay) until SIGTERM/SIGINT; returns the exit code.

    ``pool="solo"`` runs tasks in this process (one at a time; the embedded default);
    ``"prefork"`` forks *concurrency* processes, each loading the models once.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, not {pool!r}")
    settings.ensure_dirs()
    app = create_celery(settings)
    app.steps["worker"].add(RelayStep)
    app.steps["worker"].add(HL7ProcessorStep)
    if pool == "prefork":
        _warm_models(app)
    worker = app.Worker(
        hostname=f"clinic-{os.getpid()}@{socket.gethostname()}",
        queues=list(queues or ALL_QUEUES),
        concurrency=concurrency,
        pool=pool,
        loglevel=loglevel,
        quiet=True,
        optimization="fair",
        # Mingle (start-up sync) and gossip/heartbeat ride on broadcast and event messages that the
        # embedded transport cannot carry between processes; no feature of ours needs them.
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
        clinic_relay=with_relay,
        # Stored HL7 v2 messages are processed where the relay runs (worker/hl7.py).
        clinic_hl7=with_relay,
    )
    log.info(
        "worker starting: broker %s, queues %s, pool %s x%d, relay %s",
        broker_kind(settings),
        ",".join(worker.app.amqp.queues.keys()),
        pool,
        concurrency,
        "on" if with_relay else "off",
    )
    worker.start()
    return int(worker.exitcode or 0)


def run_relay_forever(settings: Settings) -> int:
    """Only the relay, until SIGTERM/SIGINT (e.g. next to workers that run with_relay=False)."""
    app = create_celery(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping the relay", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_relay(settings, app, stop)
    return 0
