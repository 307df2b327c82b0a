"""Fixtures of the web tests: settings on the test's database, and a client of the real app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from clinic.settings import Environment, Settings
from clinic.web.app import create_app


@pytest.fixture
def web_settings(db_url: str, data_dir: Path) -> Settings:
    s = Settings(
        data_dir=data_dir, database_url=db_url, environment=Environment.TEST, worklist_max_wait_minutes=120
    )
    s.ensure_dirs()
    return s


@pytest.fixture
def client(web_settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(web_settings, session_factory)) as test_client:
        yield test_client
