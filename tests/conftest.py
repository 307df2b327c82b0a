"""Shared fixtures: settings on a temporary data dir, real SQLite and PostgreSQL databases.

PostgreSQL runs on 127.0.0.1:5432 (trust) on every machine of this kind; each test that asks for
it gets a fresh database, dropped afterwards, so that several processes (SCP, worker) can see
committed data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory
from clinic.migrate import upgrade
from clinic.settings import Environment, Settings
from tests.peers.orthanc import orthanc_factory  # noqa: F401  (fixture: Orthanc as the PACS)

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get(
    "CLINIC_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_TEMPLATE = os.environ.get("CLINIC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
REDIS_URL = os.environ.get("CLINIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/{db}")
RABBITMQ_URL = os.environ.get("CLINIC_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    """Embedded-mode settings on a fresh data dir with a migrated SQLite database."""
    s = Settings(data_dir=data_dir, environment=Environment.TEST, series_quiet_seconds=0.5)
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test; its SQLAlchemy URL."""
    psycopg = pytest.importorskip("psycopg")
    name = f"clinic_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL_TEMPLATE.format(name=name)
    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, data_dir: Path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'clinic.db'}"
        upgrade(url)
        return url
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture(scope="session")
def demo_models_dir() -> Path:
    """The demo MONAI bundles (chest radiograph classifier, CT nodule segmenter), trained once
    (seeded) and reused across test runs.

    ``make test`` trains them before pytest starts (``clinic models train-demo``); this fixture
    trains them only when they are missing, e.g. when a single test file is run by hand.
    """
    from inference.demo.ct_train import ct_bundle_exists, train_ct_demo
    from inference.demo.train import demo_bundle_exists, train_demo

    path = Path(os.environ.get("CLINIC_TEST_MODELS_DIR", str(REPO_ROOT / "var" / "models")))
    if not demo_bundle_exists(path):
        train_demo(path)
    if not ct_bundle_exists(path):  # the CT lung-nodule segmenter: about two minutes
        train_ct_demo(path)
    return path


#: Redis database the tests use; flushed before and after each test that asks for it.
REDIS_TEST_DB = 11


@pytest.fixture
def redis_db() -> Iterator[str]:
    """The URL of a Redis database of the tests' own, empty."""
    redis = pytest.importorskip("redis")
    url = REDIS_URL.format(db=REDIS_TEST_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A private RabbitMQ vhost per test: fixed queue names never meet another run's queues."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    vhost = f"clinic-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield RABBITMQ_URL.rstrip("/") + "/" + vhost
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)

