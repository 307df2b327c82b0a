"""Our SCU: send_files and echo, against our SCP and against nothing at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from clinic.settings import Settings
from integrations.dicom.scp import ScpServer
from integrations.dicom.scu import SendResult, echo, send_files
from integrations.dicom.status import StoreStatus
from tests.conftest import free_port

from .helpers import failures, instances, partial_files, pydicom_file, synthetic_file


def test_echo(scp: ScpServer) -> None:
    assert echo("127.0.0.1", scp.port, "CLINIC")


def test_echo_to_nobody() -> None:
    assert not echo("127.0.0.1", free_port(), "CLINIC")


def test_send_to_nobody(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, "a.dcm")
    [result] = send_files("127.0.0.1", free_port(), "CLINIC", [path])
    assert not result.ok and result.status is None and "association" in result.error


def test_unreadable_and_unsupported_files_do_not_stop_the_others(
    scp: ScpServer, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    good = synthetic_file(tmp_path, "good.dcm")
    calls: list[tuple[int, int]] = []
    results = send_files(
        "127.0.0.1",
        scp.port,
        "CLINIC",
        [junk, pydicom_file("rtplan.dcm"), good],
        progress=lambda *a: calls.append(a),
    )
    assert [r.path.name for r in results] == ["junk.dcm", "rtplan.dcm", "good.dcm"]
    assert [r.ok for r in results] == [False, False, True]
    assert "not a DICOM file" in results[0].error
    assert "No presentation context" in results[1].error
    assert calls[-1] == (3, 3)
    assert len(instances(session_factory)) == 1


def test_disk_full_is_answered_out_of_resources(
    scp: ScpServer,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC at fsync: A700 with the reason, no file, no instance row, a failure row."""

    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    [result] = send_files("127.0.0.1", scp.port, "CLINIC", [synthetic_file(tmp_path, "full.dcm")])
    monkeypatch.undo()
    assert result.status == StoreStatus.OUT_OF_RESOURCES
    assert "No space left" in result.error
    assert instances(session_factory) == []
    assert partial_files(scp_settings) == []
    [failure] = failures(session_factory)
    assert failure.status_code == StoreStatus.OUT_OF_RESOURCES and "No space left" in failure.reason


def test_send_result_text() -> None:
    result = SendResult(Path("/x/a.dcm"), "1.2.3", 0xA700, "database error")
    assert not result.ok
    assert str(result) == "a.dcm (1.2.3): 0xA700 database error"
    assert SendResult(Path("a"), "1", 0xB007).ok
