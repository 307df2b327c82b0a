"""Sign-in throttling: failed attempts in the audit trail lock a user name and a client address for a
while, on both login endpoints, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from clinic.audit.models import AuditEvent
from clinic.auth import service
from clinic.auth.models import Role
from clinic.db import unit_of_work, utcnow
from clinic.settings import Settings
from clinic.web.app import create_app
from tests.clinic.helpers import PASSWORD, add_user, audit_rows

WRONG = "hunter2-not-the-password"
WINDOW_S = 15 * 60


@contextmanager
def clients(settings: Settings, factory: sessionmaker[Session], *hosts: str) -> Iterator[list[TestClient]]:
    """One app, one test client per peer address."""
    app = create_app(settings, factory)
    opened = [TestClient(app, client=(host, 50000)) for host in hosts]
    try:
        yield [c.__enter__() for c in opened]
    finally:
        for c in opened:
            c.__exit__(None, None, None)


def token(client: TestClient, username: str, password: str) -> int:
    return client.post("/api/auth/token", data={"username": username, "password": password}).status_code


def test_token_endpoint_locks_after_max_failures(
    client: TestClient, web_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    assert web_settings.login_max_failures == 5
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    assert [token(client, " rad1 ", WRONG) for _ in range(5)] == [401] * 5  # stripped, as audited

    refused = client.post("/api/auth/token", data={"username": "rad1", "password": PASSWORD})
    assert refused.status_code == 429
    assert "access_token" not in refused.json() and refused.json()["detail"]
    assert WINDOW_S - 5 <= int(refused.headers["retry-after"]) <= WINDOW_S

    assert [e.username for e in audit_rows(session_factory, service.LOGIN_FAILED)] == ["rad1"] * 5
    throttled = audit_rows(session_factory, service.LOGIN_THROTTLED)
    assert [(e.username, e.role, e.client) for e in throttled] == [("rad1", "", "testclient")]
    assert audit_rows(session_factory, service.LOGIN_OK) == []
    for event in audit_rows(session_factory):
        for value in (event.username, event.resource_id, event.detail, event.client):
            assert WRONG not in value and PASSWORD not in value


def test_form_shows_the_lockout_message(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    for _ in range(5):
        wrong = client.post("/login", data={"username": "rad1", "password": WRONG}, follow_redirects=False)
        assert wrong.status_code == 401
    page = client.post("/login", data={"username": "rad1", "password": PASSWORD}, follow_redirects=False)
    assert page.status_code == 429 and "text/html" in page.headers["content-type"]
    assert "Too many failed attempts; try again in 15 minutes." in page.text
    assert WINDOW_S - 5 <= int(page.headers["retry-after"]) <= WINDOW_S
    assert "set-cookie" not in page.headers
    assert len(audit_rows(session_factory, service.LOGIN_THROTTLED)) == 1


def test_lock_is_per_user_name_and_per_client(
    web_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    for name in ("rad1", "rad2", "rad3"):
        add_user(session_factory, name, Role.RADIOLOGIST)
    with clients(web_settings, session_factory, "10.0.0.1", "10.0.0.2", "10.0.0.3") as (a, b, c):
        assert [token(a, "rad1", WRONG) for _ in range(5)] == [401] * 5
        assert token(a, "rad1", PASSWORD) == 429
        assert token(b, "rad1", PASSWORD) == 429  # the user name is locked from everywhere
        assert token(b, "rad2", PASSWORD) == 200  # another user from another client is unaffected
        assert token(a, "rad2", PASSWORD) == 429  # ...but client A is locked too (5 failures from it)

        # Spraying many user names from one client locks that client, not the names.
        assert [token(c, f"ghost{i}", WRONG) for i in range(5)] == [401] * 5
        assert token(c, "rad3", PASSWORD) == 429
        assert token(b, "rad3", PASSWORD) == 200
        assert token(b, "ghost0", WRONG) == 401  # one failure under that name: not locked
    throttled = audit_rows(session_factory, service.LOGIN_THROTTLED)
    assert [(e.username, e.client) for e in throttled] == [
        ("rad1", "10.0.0.1"),
        ("rad1", "10.0.0.2"),
        ("rad2", "10.0.0.1"),
        ("rad3", "10.0.0.3"),
    ]


def test_success_does_not_reset_the_count(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    assert [token(client, "rad1", WRONG) for _ in range(4)] == [401] * 4
    assert token(client, "rad1", PASSWORD) == 200
    assert token(client, "rad1", WRONG) == 401
    assert token(client, "rad1", PASSWORD) == 429


def test_lock_ends_when_the_window_passes(
    web_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    settings = web_settings.model_copy(update={"login_lockout_minutes": 0.01, "login_max_failures": 2})
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    with clients(settings, session_factory, "10.0.0.1") as (a,):
        assert [token(a, "rad1", WRONG) for _ in range(2)] == [401] * 2
        refused = a.post("/api/auth/token", data={"username": "rad1", "password": PASSWORD})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"  # at least 1 s
        time.sleep(0.7)  # the window is 0.6 s
        assert token(a, "rad1", PASSWORD) == 200


def add_event(
    factory: sessionmaker[Session], action: str, at: dt.datetime, username: str, client: str
) -> None:
    with unit_of_work(factory) as session:
        session.add(
            AuditEvent(
                at=at, username=username, role="", action=action, resource_type="session", client=client
            )
        )


def test_wait_counts_from_the_oldest_failure_and_ignores_refusals(
    web_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    settings = web_settings.model_copy(update={"login_max_failures": 3, "login_lockout_minutes": 10.0})
    t0 = utcnow().replace(microsecond=0) - dt.timedelta(hours=1)
    window = dt.timedelta(minutes=10)

    def wait(now: dt.datetime, username: str = "rad1", client: str = "10.0.0.9") -> int | None:
        with unit_of_work(session_factory) as session:
            return service.login_throttle(session, username, client, settings, now=now)

    assert wait(t0) is None  # nothing recorded
    for i, host in enumerate(("10.0.0.1", "10.0.0.2")):
        add_event(session_factory, service.LOGIN_FAILED, t0 + dt.timedelta(seconds=i), "rad1", host)
    add_event(session_factory, service.LOGIN_OK, t0 + dt.timedelta(seconds=5), "rad1", "10.0.0.1")
    assert wait(t0 + dt.timedelta(seconds=10)) is None  # two failures (and a success): below three
    add_event(session_factory, service.LOGIN_FAILED, t0 + dt.timedelta(seconds=20), "rad1", "10.0.0.3")

    # Locked until the oldest of the three failures (at t0) leaves the ten-minute window.
    assert wait(t0 + dt.timedelta(seconds=30)) == 600 - 30
    assert wait(t0 + dt.timedelta(seconds=30), username=" rad1 ") == 600 - 30
    assert wait(t0 + dt.timedelta(seconds=30), username="rad2") is None
    # Refusals during the lock are audited but never extend it.
    for s in (60, 300, 590):
        add_event(session_factory, service.LOGIN_THROTTLED, t0 + dt.timedelta(seconds=s), "rad1", "10.0.0.9")
    assert wait(t0 + window - dt.timedelta(milliseconds=500)) == 1  # rounded up, never 0
    assert wait(t0 + window) is None

    # Per client: failures under different names from one address; an unknown address ("") is not
    # counted, so peers without one do not lock each other.
    for i in range(3):
        add_event(session_factory, service.LOGIN_FAILED, t0 + dt.timedelta(seconds=i), f"ghost{i}", "")
        add_event(
            session_factory, service.LOGIN_FAILED, t0 + dt.timedelta(seconds=i), f"ghost{i}", "10.0.0.7"
        )
    assert wait(t0 + dt.timedelta(seconds=60), username="rad2", client="10.0.0.7") == 600 - 60
    assert wait(t0 + dt.timedelta(seconds=60), username="rad2", client="") is None
