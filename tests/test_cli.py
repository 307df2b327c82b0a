"""The ``clinic`` command as a user meets it: real subprocesses, clear errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLINIC = str(Path(sys.executable).parent / "clinic")


def run(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "CLINIC_DATA_DIR": str(data_dir),
        "CLINIC_ENVIRONMENT": "test",
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run([CLINIC, *args], env=full_env, capture_output=True, text=True, timeout=120)


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = run(["db", "upgrade"], tmp_path / "var")
    assert result.returncode == 0, result.stderr
    assert "revision" in result.stdout
    assert (tmp_path / "var" / "clinic.db").exists()


def test_users_add_and_duplicate(tmp_path: Path) -> None:
    ok = run(["users", "add", "alice", "--role", "radiologist", "--password", "s3cret-pass"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    again = run(["users", "add", "alice", "--role", "radiologist", "--password", "s3cret-pass"], tmp_path)
    assert again.returncode == 1
    assert "alice" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["users", "add", "bob", "--role", "surgeon", "--password", "long-enough"], {}, "unknown role"),
        (["users", "add", "bob", "--role", "clinic", "--password", "short"], {}, "at least 8"),
        (["worklist"], {"CLINIC_HTTP_PORT": "not-a-port"}, "invalid settings"),
        (
            ["worklist"],
            {"CLINIC_ENVIRONMENT": "production", "CLINIC_SECRET_KEY": "changeme"},
            "CLINIC_SECRET_KEY",
        ),
        (["worklist"], {"CLINIC_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, "database"),
    ],
)
def test_errors_are_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run(args, tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_worklist_prints_a_table(tmp_path: Path) -> None:
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    result = run(["worklist"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Priority" in result.stdout and "AI findings" in result.stdout


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run(["up"], tmp_path, CLINIC_HTTP_PORT=str(port), CLINIC_HTTP_HOST="127.0.0.1")
    assert result.returncode == 1
    assert f"HTTP port 127.0.0.1:{port} is in use" in result.stderr


def test_an_old_or_missing_schema_asks_for_an_upgrade(tmp_path: Path) -> None:
    missing = run(["worklist"], tmp_path)
    assert missing.returncode == 1
    assert "clinic db upgrade" in missing.stderr and "Traceback" not in missing.stderr
    assert run(["db", "upgrade", "--revision", "0001"], tmp_path).returncode == 0
    old = run(["jobs", "failed"], tmp_path)
    assert old.returncode == 1 and "revision 0001" in old.stderr
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    assert run(["jobs", "failed"], tmp_path).returncode == 0
