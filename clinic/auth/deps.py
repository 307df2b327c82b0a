"""Who is calling: the token (``Authorization: Bearer`` header or the login cookie) → the user.

Missing, invalid or expired token → 401 (pages turn it into a redirect to ``/login``, see
:mod:`clinic.web.errors`); a valid token of a role the route does not admit → 403. The user is
re-read from the database on every request: the database, not the token, says whether the account
is active and what its role is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from clinic.auth import service
from clinic.auth.models import Role, User
from clinic.web.deps import SessionDep, SettingsDep

log = logging.getLogger(__name__)

#: The HttpOnly, SameSite=Strict cookie that carries the token for the pages.
TOKEN_COOKIE = "clinic_token"


@dataclass(frozen=True)
class Principal:
    id: int
    username: str
    role: Role


_bearer = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def current_user(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    bearer: Annotated[str | None, Depends(_bearer)],
) -> User:
    """The authenticated, active user of this request (any role)."""
    token = bearer or request.cookies.get(TOKEN_COOKIE)
    if not token:
        raise _unauthenticated("not authenticated")
    try:
        claims = service.decode_token(settings, token)
    except service.ExpiredTokenError as exc:
        raise _unauthenticated("token expired") from exc
    except service.InvalidTokenError as exc:
        raise _unauthenticated("invalid token") from exc
    user = session.get(User, claims.user_id)
    if user is None or not user.active or user.username != claims.username:
        raise _unauthenticated("invalid token")
    # A plain snapshot for the pages (also error pages rendered after the session has closed).
    request.state.user = Principal(user.id, user.username, Role(user.role))
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require_roles(*roles: Role | str) -> Callable[..., User]:
    """A dependency that admits only users of *roles* (403 for the others) and returns the user."""
    allowed = frozenset(Role(r) for r in roles)
    if not allowed:
        raise ValueError("require_roles needs at least one role")

    def dependency(request: Request, user: CurrentUser) -> User:
        if Role(user.role) not in allowed:
            log.warning("forbidden: user id %s (role %s) on %s", user.id, user.role, request.url.path)
            raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="forbidden for this role")
        return user

    dependency.__name__ = "require_" + "_or_".join(sorted(allowed))
    return dependency
