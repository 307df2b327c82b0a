"""``clinic up``: start the HTTP server, the DICOM SCP, the MLLP listener and a worker, stop them
all cleanly.

Each component runs in its own child process. The supervisor migrates the database first (once,
so that children never race on it), waits until every component answers, and on Ctrl-C, SIGTERM
or the death of any child stops the others: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from rich.console import Console

from clinic.settings import Settings
from clinicctl.errors import CliError

GRACE_SECONDS = 15.0


class Supervisor:
    def __init__(self, settings: Settings, console: Console, *, with_worker: bool = True) -> None:
        self.settings = settings
        self.console = console
        self.with_worker = with_worker
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_event = threading.Event()
        self.failed: str | None = None
        self._old_handlers: dict[int, object] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        from clinic.migrate import upgrade

        self.settings.ensure_dirs()
        upgrade(self.settings.resolved_database_url)
        self._check_ports_free()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._spawn("http", [sys.executable, "-m", "clinicctl.main", "serve", "http"])
            self._spawn("dicom", [sys.executable, "-m", "clinicctl.main", "serve", "dicom"])
            self._spawn("mllp", [sys.executable, "-m", "clinicctl.main", "serve", "mllp"])
            if self.with_worker:
                self._spawn("worker", [sys.executable, "-m", "worker"])
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_event.set()

    @property
    def log_dir(self) -> Path:
        return self.settings.resolved_data_dir / "logs"

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Each component logs to its own file so that the terminal stays readable; the banner
        # says where. Children ignore the terminal's SIGINT (own session): the supervisor alone
        # decides the order of stopping.
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.children[name] = subprocess.Popen(
                argv, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
            )

    def _check_ports_free(self) -> None:
        for name, host, port in (
            ("HTTP", self.settings.http_host, self.settings.http_port),
            ("DICOM", self.settings.dicom_host, self.settings.dicom_port),
            ("MLLP", self.settings.mllp_host, self.settings.mllp_port),
        ):
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    raise CliError(
                        f"{name} port {host}:{port} is in use ({exc.strerror}); "
                        f"stop the other server or set CLINIC_{name}_PORT"
                    ) from None

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self._http_host()}:{self.settings.http_port}/health"
        pending = {"http", "dicom", "mllp"}
        ports = {
            "dicom": (self._dicom_host(), self.settings.dicom_port),
            "mllp": (self._mllp_host(), self.settings.mllp_port),
        }
        while pending:
            self._check_children()
            if time.monotonic() > deadline:
                waiting = ", ".join(sorted(pending))
                raise CliError(f"components did not start within {timeout:.0f} s: {waiting}")
            if "http" in pending:
                try:
                    with urllib.request.urlopen(url, timeout=1) as response:
                        if response.status == 200:
                            pending.discard("http")
                except OSError:
                    pass
            for name in ("dicom", "mllp"):
                if name in pending:
                    try:
                        with socket.create_connection(ports[name], timeout=1):
                            pending.discard(name)
                    except OSError:
                        pass
            time.sleep(0.1)

    def _http_host(self) -> str:
        return "127.0.0.1" if self.settings.http_host in ("0.0.0.0", "::") else self.settings.http_host

    def _dicom_host(self) -> str:
        return "127.0.0.1" if self.settings.dicom_host in ("0.0.0.0", "::") else self.settings.dicom_host

    def _mllp_host(self) -> str:
        return "127.0.0.1" if self.settings.mllp_host in ("0.0.0.0", "::") else self.settings.mllp_host

    def _check_children(self) -> None:
        for name, proc in self.children.items():
            code = proc.poll()
            if code is not None:
                self.failed = name
                raise CliError(
                    f"the {name} process exited with status {code}; see {self.log_dir / (name + '.log')}"
                )

    def wait(self) -> None:
        """Block until a signal arrives or a component dies."""
        while not self.stop_event.wait(0.5):
            try:
                self._check_children()
            except CliError as exc:
                self.console.print(f"[bold red]{exc}[/]; stopping the others")
                self.stop()
                raise
        self.console.print("stopping ...")

    def stop(self) -> None:
        alive = {name: proc for name, proc in self.children.items() if proc.poll() is None}
        for proc in alive.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, proc in alive.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.print(f"[yellow]{name} did not stop in {GRACE_SECONDS:.0f} s; killing it[/]")
                proc.kill()
                proc.wait()

    # --- output ----------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://{self._http_host()}:{self.settings.http_port}"

    def print_banner(self) -> None:
        s = self.settings
        self.console.print(
            f"[bold green]clinic is up[/]  web {self.http_url}/radiology  ·  "
            f"DICOM {s.dicom_ae}@{self._dicom_host()}:{s.dicom_port}  ·  "
            f"HL7 MLLP {self._mllp_host()}:{s.mllp_port}  ·  "
            f"{'embedded' if s.is_embedded_broker else 'broker ' + _redact(s.broker_url)}  ·  "
            f"data {s.resolved_data_dir}"
        )
        self.console.print(
            f"logs in {self.log_dir}/{{http,dicom,mllp,worker}}.log · Ctrl-C stops everything."
        )
        models = s.resolved_models_dir
        if not any(models.glob("*/configs/metadata.json")):
            self.console.print(
                f"[yellow]no model bundles in {models}: studies will be stored but not read; "
                "run `clinic models train-demo` or drop a MONAI bundle there[/]"
            )


def _redact(url: str) -> str:
    """A broker URL without its password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
