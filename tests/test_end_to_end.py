"""The first end-to-end path, against real peers: dcmtk's storescu → our DICOM SCP → outbox →
Celery worker (real process) → MONAI model → radiology worklist API, started by ``clinic up``
exactly as a user would, in embedded mode (SQLite + filesystem broker) and in scaled mode
(PostgreSQL with Redis, and with RabbitMQ). ``clinic up`` must stop every component on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tests.conftest import free_port

CLINIC = str(Path(sys.executable).parent / "clinic")
PASSWORD = "correct-horse-battery"


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"clinic up exited early with {proc.returncode}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _mode_env(request: pytest.FixtureRequest, mode: str) -> dict[str, str]:
    if mode == "embedded":
        return {}
    database = request.getfixturevalue("pg_database")
    broker = request.getfixturevalue("redis_db" if mode == "postgres-redis" else "rabbitmq_vhost")
    return {"CLINIC_DATABASE_URL": database, "CLINIC_BROKER_URL": broker}


def _synthetic_study(folder: Path, index: int) -> Path:
    from inference.demo.phantoms import synth_chest
    from integrations.dicom.synthetic import build_cxr_dataset, write_dataset

    phantom = synth_chest(np.random.default_rng(100 + index), consolidation=index == 0, nodule=index == 1)
    ds = build_cxr_dataset(
        phantom.image,
        patient_id=f"E2E{index}",
        patient_name=f"TEST^E2E{index}",
        accession_number=f"E2E{index}",
    )
    path = folder / f"synthetic-{index}.dcm"
    write_dataset(ds, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        "embedded",
        pytest.param("postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
        pytest.param("postgres-rabbitmq", marks=[pytest.mark.postgres, pytest.mark.rabbitmq]),
    ],
)
def test_storescu_to_worklist(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path
) -> None:
    http_port, dicom_port, mllp_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "CLINIC_DATA_DIR": str(tmp_path / "var"),
        "CLINIC_MODELS_DIR": str(demo_models_dir),
        "CLINIC_HTTP_PORT": str(http_port),
        "CLINIC_DICOM_PORT": str(dicom_port),
        "CLINIC_MLLP_PORT": str(mllp_port),
        "CLINIC_SERIES_QUIET_SECONDS": "1",
        "CLINIC_ENVIRONMENT": "test",
        **_mode_env(request, mode),
    }
    subprocess.run(
        [CLINIC, "users", "add", "rad", "--role", "radiologist", "--password", PASSWORD],
        env=env,
        check=True,
        capture_output=True,
    )
    # Two real chest radiographs: the JPEG 2000 file as it is, and the uncompressed one with new
    # UIDs (dcmodify, another dcmtk tool) so that it is a study of its own.
    inputs = tmp_path / "in"
    inputs.mkdir()
    j2k = Path(get_testdata_file("RG1_J2KR.dcm"))
    unc = inputs / "RG1_UNCR.dcm"
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), unc)
    subprocess.run(["dcmodify", "-nb", "-gst", "-gse", "-gin", str(unc)], check=True, capture_output=True)
    synthetic = [_synthetic_study(inputs, i) for i in range(2)]

    up = subprocess.Popen([CLINIC, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{http_port}"
        _wait_http(f"{base}/health", up)
        for path in [j2k, unc, *synthetic]:
            # storescu proposes only uncompressed syntaxes unless told; -xv adds JPEG 2000 lossless
            extra = ["-xv"] if path == j2k else []
            sent = subprocess.run(
                ["storescu", *extra, "-aec", "CLINIC", "127.0.0.1", str(dicom_port), str(path)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert sent.returncode == 0, sent.stderr
        token = httpx.post(f"{base}/api/auth/token", data={"username": "rad", "password": PASSWORD}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}

        deadline = time.monotonic() + 240
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            response = httpx.get(f"{base}/api/radiology/worklist", headers=headers, timeout=10)
            assert response.status_code == 200, response.text
            rows = response.json()["rows"]
            if len(rows) == 4 and all(row.get("findings") for row in rows):
                break
            time.sleep(0.5)
        assert len(rows) == 4, rows
        for row in rows:
            findings = row["findings"]
            assert isinstance(findings, list) and findings, row
            for finding in findings:
                assert finding["model_name"] and finding["model_version"]
                assert 0.0 <= finding["probability"] <= 1.0
                assert finding["disclaimer"] == "synthetic demo model — not for clinical use"
        accessions = {row["accession_number"] for row in rows}
        assert {"E2E0", "E2E1"} <= accessions
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            output = up.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            up.kill()
            raise AssertionError("clinic up did not stop within 60 s of SIGTERM") from None
    assert up.returncode == 0, output
    # Every component is gone: nothing listens on either port any more (SO_REUSEADDR lets the
    # bind pass over the TIME_WAIT connections that closed sockets leave, never over a listener).
    import socket

    for port in (http_port, dicom_port, mllp_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
