"""Run one component in the foreground; ``clinic up`` starts each in its own process.

One process per component keeps the GIL of the DICOM SCP, the HTTP server and the model apart
(DESIGN.md §10: a pynetdicom SCP keeps one core busy on its own).
"""

from __future__ import annotations

import gc
import signal
import threading

from clinic.settings import Settings
from clinicctl.errors import CliError


def settle_heap() -> None:
    """Move everything alive after start-up (imported modules, the ~200,000 objects of the FHIR
    model classes, routes, models) out of the cyclic garbage collector's sight: its full
    collections walked them all, ~8 ms every few requests of a 100-entry FHIR transaction
    (measured here; the CPython ``gc.freeze`` advice for servers that fork or run long)."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings, component: str) -> None:
    settings.ensure_dirs()
    if component == "http":
        import uvicorn

        from clinicctl.webapp import build_app

        app = build_app(settings)
        settle_heap()
        uvicorn.run(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            access_log=False,
        )
    elif component == "dicom":
        from integrations.dicom.scp import start_scp

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        server = start_scp(settings)
        try:
            stop.wait()
        finally:
            server.shutdown()
    elif component == "mllp":
        import logging

        from integrations.hl7v2.listener import run_listener
        from integrations.hl7v2.mapping import REQUIRED_FIELDS, SUPPORTED

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        settle_heap()
        run_listener(settings, SUPPORTED, stop, required=REQUIRED_FIELDS)
    else:
        raise CliError(f"unknown component {component!r}: http, dicom or mllp")
