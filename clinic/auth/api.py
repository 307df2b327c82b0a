"""Sign-in: the OAuth2 password-flow token endpoint (RFC 6749 §4.3) for API clients, and the login
and logout pages for browsers (the token in an HttpOnly, SameSite=Strict cookie).

Every sign-in, successful or not, is audited with the client address and the username tried;
the password never reaches the audit trail or the logs. Too many recent failures for a user name or
from a client lock further attempts (:func:`clinic.auth.service.login_throttle`): they are answered
429 Too Many Requests with ``Retry-After`` (RFC 6585 §4, RFC 9110 §10.2.3) before the password is
checked, and audited as ``login-throttled``.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy.orm import Session

from clinic.audit import service as audit
from clinic.auth import service
from clinic.auth.deps import TOKEN_COOKIE, CurrentUser
from clinic.auth.models import User
from clinic.auth.schemas import TokenOut, UserOut
from clinic.settings import Environment, Settings
from clinic.web.deps import ClientDep, SessionDep, SettingsDep
from clinic.web.templating import home_for, render, safe_next

router = APIRouter(tags=["auth"])

LOGIN_FAILED = service.LOGIN_FAILED


def _audit_login(session: Session, username: str, user: User | None, client: str) -> None:
    audit.record(
        session,
        username=user.username[:64] if user else service.audited_username(username),
        role=str(user.role) if user else "",
        action=service.LOGIN_OK if user else LOGIN_FAILED,
        resource_type="session",
        client=client,
        detail="" if user else "bad credentials or inactive account",
    )


def _throttled(session: Session, username: str, client: str, settings: Settings) -> int | None:
    """Seconds to wait when this attempt is refused (and audited as such), else ``None``."""
    wait = service.login_throttle(session, username, client, settings)
    if wait is not None:
        audit.record(
            session,
            username=service.audited_username(username),
            role="",
            action=service.LOGIN_THROTTLED,
            resource_type="session",
            client=client,
            detail=f"too many failed attempts; refused without checking the password for {wait} s",
        )
    return wait


def _lockout_message(wait: int) -> str:
    minutes = math.ceil(wait / 60)
    return f"Too many failed attempts; try again in {minutes} minute{'' if minutes == 1 else 's'}."


@router.post("/api/auth/token", response_model=TokenOut)
def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> TokenOut | JSONResponse:
    wait = _throttled(session, form.username, client, settings)
    if wait is not None:
        # Returned, not raised: the refusal's audit row must commit.
        return JSONResponse(
            {"detail": "too many failed sign-in attempts; try again later"},
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(wait)},
        )
    user = service.authenticate(session, form.username, form.password)
    _audit_login(session, form.username, user, client)
    if user is None:
        # Returned, not raised: the failed attempt's audit row must commit.
        return JSONResponse(
            {"detail": "incorrect username or password"},
            status_code=status.HTTP_401_UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return TokenOut(
        access_token=service.issue_token(settings, user), expires_in=settings.access_token_minutes * 60
    )


@router.get("/api/auth/me", response_model=UserOut)
def me(user: CurrentUser) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.role, home=home_for(user.role))


@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", {"next": safe_next(next) or "", "error": ""})


def _set_token_cookie(response: Response, settings: Settings, token_value: str) -> None:
    response.set_cookie(
        TOKEN_COOKIE,
        token_value,
        max_age=settings.access_token_minutes * 60,
        httponly=True,
        samesite="strict",
        secure=settings.environment is Environment.PRODUCTION,
        path="/",
    )


@router.post("/login", include_in_schema=False)
def login_submit(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    session: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
    next: Annotated[str, Form()] = "",
) -> Response:
    wait = _throttled(session, username, client, settings)
    if wait is not None:
        response = render(
            request,
            "login.html",
            {
                "next": safe_next(next) or "",
                "error": _lockout_message(wait),
                "username": username,
            },
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    user = service.authenticate(session, username, password)
    _audit_login(session, username, user, client)
    if user is None:
        return render(
            request,
            "login.html",
            {"next": safe_next(next) or "", "error": "Invalid username or password.", "username": username},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    response = RedirectResponse(safe_next(next) or home_for(user.role), status_code=status.HTTP_303_SEE_OTHER)
    _set_token_cookie(response, settings, service.issue_token(settings, user))
    return response


@router.api_route("/logout", methods=["GET", "POST"], include_in_schema=False)
def logout() -> Response:
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    return response
