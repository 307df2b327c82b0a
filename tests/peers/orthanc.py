"""Orthanc (Debian package ``orthanc``) as the hospital PACS of the tests: a real peer, not a mock.

Each :class:`Orthanc` runs its own server on loopback ports with its own temporary configuration and
storage folder; :meth:`stop` and :meth:`start` again keep the storage (a PACS that goes down and
comes back). The REST API (https://orthanc.uclouvain.be/book/users/rest.html) lets a test push a
study to us (``/modalities/{name}/store``) and look at what arrived.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc server. ``modalities`` maps a name to (AE title, host, port) it may talk to."""

    def __init__(
        self, folder: Path, ae_title: str = "ORTHANC", modalities: Mapping[str, tuple[str, str, int]] = ()
    ):
        self.folder = folder
        self.ae_title = ae_title
        self.http_port = _free_port()
        self.dicom_port = _free_port()
        self.modalities = dict(modalities)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "orthanc.log"
        self.url = f"http://127.0.0.1:{self.http_port}"

    # --- life cycle -----------------------------------------------------------------------------

    def write_config(self) -> Path:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": f"test-pacs-{self.ae_title}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "StorageCompression": False,
            # Accept any calling AE for C-STORE/C-FIND/C-MOVE; the modalities below are where
            # C-MOVE may send and what /modalities/{name}/store talks to.
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "DicomScuTimeout": 10,
            "UnknownSopClassAccepted": True,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        config = self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's life)
        self.process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1.0).status_code == 200 and self._dicom_up():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start in {timeout} s: {self.log_tail()}")

    def _dicom_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- REST -------------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30.0)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any = None, content: bytes | None = None) -> Any:
        if content is not None:
            response = httpx.post(f"{self.url}{path}", content=content, timeout=60.0)
        else:
            response = httpx.post(f"{self.url}{path}", json=body, timeout=60.0)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, path: Path) -> dict[str, Any]:
        """Store a Part 10 file in Orthanc (REST, not DICOM); returns Orthanc's answer."""
        result: dict[str, Any] = self.post("/instances", content=Path(path).read_bytes())
        return result

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        self.modalities[name] = (ae_title, host, port)
        response = httpx.put(
            f"{self.url}/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port}, timeout=10.0
        )
        response.raise_for_status()

    def store_to(self, modality: str, resources: list[str]) -> Any:
        """C-STORE Orthanc resources (study/series/instance ids) to *modality* (Orthanc as SCU)."""
        return self.post(f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True})

    def studies(self) -> list[dict[str, Any]]:
        """Every study with its main DICOM tags (``StudyInstanceUID`` ...)."""
        return [self.get(f"/studies/{sid}") for sid in self.get("/studies")]

    def study_id(self, study_uid: str) -> str | None:
        found = self.post("/tools/lookup", content=study_uid.encode())
        for item in found or []:
            if item.get("Type") == "Study":
                return str(item["ID"])
        return None

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study with its tags (``/instances/{id}/simplified-tags``)."""
        sid = self.study_id(study_uid)
        if sid is None:
            return []
        out = []
        for inst in self.get(f"/studies/{sid}/instances"):
            out.append(self.get(f"/instances/{inst['ID']}/simplified-tags"))
        return out

    def instance_file(self, orthanc_id: str) -> bytes:
        response = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30.0)
        response.raise_for_status()
        return response.content

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"Orthanc: {what} not reached in {timeout} s")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start Orthanc servers on free loopback ports; all are stopped at the end of the test."""
    if not Path(ORTHANC).exists():
        pytest.fail("Orthanc is not installed: `make test` installs the Debian package `orthanc`")
    started: list[Orthanc] = []

    def make(ae_title: str = "ORTHANC", modalities: Mapping[str, tuple[str, str, int]] = ()) -> Orthanc:
        server = Orthanc(tmp_path / f"orthanc-{len(started)}", ae_title, modalities)
        server.folder.mkdir(parents=True, exist_ok=True)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()
