"""Accounts, tokens, the login page and access control, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.auth import service
from clinic.auth.deps import TOKEN_COOKIE
from clinic.auth.models import Role, User
from clinic.db import make_engine, make_session_factory, unit_of_work, utcnow
from clinic.settings import Settings
from clinic.web.app import create_app
from tests.clinic.helpers import PASSWORD, add_user, audit_rows, bearer, store_cxr, token_for

PROTECTED_API = [
    "/api/radiology/worklist",
    "/api/radiology/studies/1",
    "/api/imaging/instances/1/rendered",
    "/api/ai/findings/1/heatmap",
    "/api/auth/me",
    "/api/audit/events",
]


def test_create_user_and_authenticate(web_settings: Settings, session_factory: sessionmaker[Session]) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    with unit_of_work(session_factory) as session, pytest.raises(service.UserExistsError, match="rad1"):
        service.create_user(session, "rad1", "other password", "clinic")
    with unit_of_work(session_factory) as session, pytest.raises(ValueError):
        service.create_user(session, "x", "pw", "surgeon")  # not a role
    with unit_of_work(session_factory) as session:
        user = service.authenticate(session, "rad1", PASSWORD)
        assert user is not None and user.role == Role.RADIOLOGIST
        assert user.password_hash.startswith("$argon2")
        assert PASSWORD not in user.password_hash
        assert service.authenticate(session, "rad1", "wrong") is None
        assert service.authenticate(session, "nobody", PASSWORD) is None
        user.active = False
    with unit_of_work(session_factory) as session:
        assert service.authenticate(session, "rad1", PASSWORD) is None  # deactivated


def test_token_round_trip_and_rejections(
    web_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    with unit_of_work(session_factory) as session:
        user = session.scalars(select(User)).one()
    token = service.issue_token(web_settings, user)
    claims = service.decode_token(web_settings, token)
    assert (claims.user_id, claims.username, claims.role) == (user.id, "rad1", Role.RADIOLOGIST)
    minutes = (claims.expires_at - utcnow()).total_seconds() / 60
    assert web_settings.access_token_minutes - 1 < minutes <= web_settings.access_token_minutes

    old = service.issue_token(web_settings, user, now=utcnow() - dt.timedelta(days=1))
    with pytest.raises(service.ExpiredTokenError):
        service.decode_token(web_settings, old)
    forged = jwt.encode(
        {"sub": str(user.id), "name": "rad1", "role": "admin", "typ": "access", "iat": 0, "exp": 9999999999},
        "another key, long enough for HS256 (32+ bytes)",
        algorithm="HS256",
    )
    with pytest.raises(service.InvalidTokenError):
        service.decode_token(web_settings, forged)
    with pytest.raises(service.InvalidTokenError):
        service.decode_token(web_settings, token[:-4] + "AAAA")


@pytest.mark.parametrize("path", PROTECTED_API)
def test_api_without_token_is_401(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == "not authenticated"


def test_bad_and_expired_tokens_are_401(
    client: TestClient, web_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    with unit_of_work(session_factory) as session:
        user = session.scalars(select(User)).one()
    expired = service.issue_token(web_settings, user, now=utcnow() - dt.timedelta(minutes=481))
    response = client.get("/api/radiology/worklist", headers=bearer(expired))
    assert (response.status_code, response.json()["detail"]) == (401, "token expired")
    for bad in ("garbage", token_for(client, "rad1")[:-3] + "abc"):
        response = client.get("/api/radiology/worklist", headers=bearer(bad))
        assert (response.status_code, response.json()["detail"]) == (401, "invalid token")
    # A valid token of a user deleted since: the database is the authority.
    token = token_for(client, "rad1")
    with unit_of_work(session_factory) as session:
        session.get(User, user.id).active = False  # type: ignore[union-attr]
    assert client.get("/api/radiology/worklist", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize("role", [Role.CLINIC, Role.ICU_NURSE, Role.ADMIN])
def test_other_roles_are_403_on_radiology(
    client: TestClient, web_settings: Settings, session_factory: sessionmaker[Session], role: Role
) -> None:
    add_user(session_factory, "someone", role)
    stored = store_cxr(web_settings, session_factory, patient="P1")
    headers = bearer(token_for(client, "someone"))
    for path in (
        "/api/radiology/worklist",
        f"/api/radiology/studies/{stored.study_id}",
        f"/api/imaging/instances/{stored.instance_id}/rendered",
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 403, path
        assert response.json() == {"detail": "forbidden for this role"}
    page = client.get("/radiology", headers=headers, follow_redirects=False)
    assert page.status_code == 403 and "text/html" in page.headers["content-type"]
    assert audit_rows(session_factory, "read") == []  # nothing was read


def test_failed_login_is_audited_without_the_password(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    secret_attempt = "hunter2-not-the-password"
    for username in ("rad1", "ghost"):
        response = client.post("/api/auth/token", data={"username": username, "password": secret_attempt})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    failed = audit_rows(session_factory, "login-failed")
    assert [(e.username, e.role, e.client) for e in failed] == [
        ("rad1", "", "testclient"),
        ("ghost", "", "testclient"),
    ]
    for event in audit_rows(session_factory):
        for value in (event.username, event.resource_id, event.detail, event.client):
            assert secret_attempt not in value
    token_for(client, "rad1")
    logins = audit_rows(session_factory, "login")
    assert [(e.username, e.role) for e in logins] == [("rad1", "radiologist")]


def test_login_page_sets_cookie_and_redirects(
    client: TestClient, web_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    page = client.get("/radiology", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fradiology"
    assert client.get("/login").status_code == 200

    wrong = client.post("/login", data={"username": "rad1", "password": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "Invalid username or password" in wrong.text
    assert TOKEN_COOKIE not in wrong.cookies

    ok = client.post("/login", data={"username": "rad1", "password": PASSWORD}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/radiology"
    cookie = ok.headers["set-cookie"]
    assert f"{TOKEN_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/radiology", follow_redirects=False).status_code == 200  # the cookie is sent
    assert client.get("/api/radiology/worklist").status_code == 200
    assert client.get("/", follow_redirects=False).headers["location"] == "/radiology"

    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/api/radiology/worklist").status_code == 401

    # An open redirect is refused: "next" must be a local path.
    evil = client.post(
        "/login",
        data={"username": "rad1", "password": PASSWORD, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert evil.headers["location"] == "/radiology"


def test_health_reports_the_database(client: TestClient, web_settings: Settings) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    unreachable = make_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    try:
        with TestClient(create_app(web_settings, make_session_factory(unreachable))) as down:
            response = down.get("/health")
        assert response.status_code == 503
        assert response.json()["database"] == "unreachable"
    finally:
        unreachable.dispose()


def test_api_errors_are_json_and_pages_html(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "rad1", Role.RADIOLOGIST)
    headers = bearer(token_for(client, "rad1"))
    missing = client.get("/api/radiology/studies/424242", headers=headers)
    assert missing.status_code == 404 and missing.json() == {"detail": "no such study"}
    page = client.get("/radiology/studies/424242", headers=headers)
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    invalid = client.get("/api/radiology/studies/abc", headers=headers)
    assert invalid.status_code == 422 and isinstance(invalid.json()["detail"], list)
