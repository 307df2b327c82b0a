"""Sign-in: the OAuth2 password-flow token endpoint (RFC 6749 §4.3) for API clients, and the login
and logout pages for browsers (the token in an HttpOnly, SameSite=Strict cookie).

Every sign-in, successful or not, is audited with the client address and the username tried;
the password never reaches the audit trail or the logs.
"""

from __future__ import annotations

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

LOGIN_FAILED = "login-failed"


def _audit_login(session: Session, username: str, user: User | None, client: str) -> None:
    audit.record(
        session,
        username=(user.username if user else username.strip())[:64],
        role=str(user.role) if user else "",
        action="login" if user else LOGIN_FAILED,
        resource_type="session",
        client=client,
        detail="" if user else "bad credentials or inactive account",
    )


@router.post("/api/auth/token", response_model=TokenOut)
def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> TokenOut | JSONResponse:
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
