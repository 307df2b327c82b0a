"""Fixtures of the DICOM tests: our SCP on a free port over the test's database (SQLite and
PostgreSQL, through the shared ``db_url`` fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from clinic.settings import Environment, Settings
from integrations.dicom.scp import ScpServer, start_scp


@pytest.fixture
def scp_settings(db_url: str, data_dir: Path) -> Settings:
    s = Settings(
        data_dir=data_dir,
        database_url=db_url,
        environment=Environment.TEST,
        dicom_host="127.0.0.1",
        dicom_port=0,
        dicom_ae="CLINIC",
    )
    s.ensure_dirs()
    return s


@pytest.fixture
def scp(scp_settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[ScpServer]:
    server = start_scp(scp_settings, session_factory)
    try:
        yield server
    finally:
        server.shutdown()
