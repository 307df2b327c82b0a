"""Fixtures of the HL7 v2 tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory
from clinic.settings import Settings


@pytest.fixture
def sqlite_factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """A session factory on the test's migrated SQLite database, for the tests that need not run
    on both databases (the ``db_url`` fixture runs the main flows on SQLite and PostgreSQL)."""
    engine = make_engine(settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()
