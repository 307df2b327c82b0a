"""Worker bootstep: the HL7 v2 processor loop (:mod:`integrations.hl7v2.processor`) in a thread.

It runs where the outbox relay runs (``clinic worker``, ``python -m worker`` without
``--no-relay``), starts after the pool and stops before the worker exits. Several workers may run
it: processors take turns per pass (an advisory lock on PostgreSQL, the write lock on SQLite), so
messages are processed in arrival order and never twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


class HL7ProcessorStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, clinic_hl7: bool = False, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.enabled = bool(clinic_hl7)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from integrations.hl7v2.processor import run_processor

        self._stop.clear()
        self._thread = threading.Thread(
            target=run_processor,
            args=(parent.app.clinic_settings, self._stop),
            name="hl7-processor",
            daemon=True,
        )
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None

    terminate = stop
    shutdown = stop
