"""The FHIR API served by uvicorn on a free port, on SQLite and on PostgreSQL, with a user per role.

Servers are session-scoped: a migrated database costs seconds, and the tests use distinct
identifiers so that they do not see each other's resources.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from clinic.auth.models import Role
from clinic.auth.service import create_user, issue_token
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.migrate import upgrade
from clinic.settings import Environment, Settings
from clinicctl.webapp import build_app
from tests.conftest import PG_ADMIN_DSN, PG_URL_TEMPLATE, free_port

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MRN = "urn:oid:1.2.410.100.1"
#: Every stored version: the current ones and the superseded ones.
STORED_ROWS = "SELECT (SELECT count(*) FROM fhir_resources) + (SELECT count(*) FROM fhir_resource_versions)"


@dataclass
class FhirServer:
    base: str
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    tokens: dict[Role, str]

    def headers(self, role: Role = Role.ADMIN, **extra: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.tokens[role]}",
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            **extra,
        }

    def client(self, role: Role = Role.ADMIN) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers(role), timeout=60)

    def count(self, sql: str, **params: object) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql), params).scalar_one())


def _serve(data_dir: Path, database_url: str) -> Iterator[FhirServer]:
    settings = Settings(data_dir=data_dir, database_url=database_url, environment=Environment.TEST)
    settings.ensure_dirs()
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    tokens = {}
    with unit_of_work(factory) as session:
        for role in Role:
            user = create_user(session, f"fhir-{role}", "not-used-by-these-tests", role)
            session.flush()
            tokens[role] = issue_token(settings, user)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield FhirServer(f"http://127.0.0.1:{port}/fhir", settings, engine, factory, tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def _pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"clinic_fhir_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL_TEMPLATE.format(name=name)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    data_dir = tmp_path_factory.mktemp("fhir-sqlite")
    url = f"sqlite:///{data_dir / 'clinic.db'}"
    upgrade(url)
    yield from _serve(data_dir, url)


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FhirServer]:
    """The server once on SQLite and once on PostgreSQL."""
    data_dir = tmp_path_factory.mktemp(f"fhir-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'clinic.db'}"
        upgrade(url)
        yield from _serve(data_dir, url)
    else:
        for url in _pg_database():
            yield from _serve(data_dir, url)


def unique(prefix: str = "id") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def patient(mrn: str, **extra: object) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": "Park", "given": ["Minji"]}],
        "gender": "female",
        "birthDate": "1971-05-06",
        **extra,
    }


def vital(
    patient_id: str,
    loinc: str = "8867-4",
    value: float = 80,
    unit: str = "/min",
    when: str = "2024-03-01T10:00:00Z",
    **extra: object,
) -> dict[str, object]:
    """A vital-signs Observation (R4 vital-signs profile)."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        **extra,
    }


def create(server: FhirServer, body: dict[str, object]) -> dict[str, object]:
    with server.client() as client:
        response = client.post(f"/{body['resourceType']}", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created
