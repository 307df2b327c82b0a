"""Accounts, passwords and access tokens.

Passwords are hashed with Argon2id (pwdlib's recommended hasher, RFC 9106). Access tokens are JWTs
(RFC 7519) signed with HS256 and the platform's signing key; they carry the user id, the username
and the role, and expire after ``settings.access_token_minutes``. The database stays the authority
on roles: a request re-reads the user, so a deactivated account loses access at once.

Sign-in is throttled against password guessing (OWASP ASVS 4.0 V2.2.1): the failed attempts in the
audit trail within ``settings.login_lockout_minutes``, counted per user name and per client address,
lock further attempts once they reach ``settings.login_max_failures``. The count lives in the
database, so every web process sees the same one.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import jwt
from pwdlib import PasswordHash
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.audit.models import AuditEvent
from clinic.auth.models import Role, User
from clinic.db import utcnow
from clinic.settings import Settings

TOKEN_ALGORITHM = "HS256"
TOKEN_TYPE = "access"

#: Audit actions of sign-in attempts. Only ``LOGIN_FAILED`` counts towards a lock: a refused
#: (throttled) attempt is recorded but never extends the lock it was refused by.
LOGIN_OK = "login"
LOGIN_FAILED = "login-failed"
LOGIN_THROTTLED = "login-throttled"

_hasher = PasswordHash.recommended()
#: Verified against when the user does not exist, so that a wrong username costs as long as a
#: wrong password (no user enumeration through timing).
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class AuthError(Exception):
    """Base of the auth slice's errors."""


class UserExistsError(AuthError, ValueError):
    def __init__(self, username: str) -> None:
        super().__init__(f"a user named {username!r} already exists")
        self.username = username


class InvalidTokenError(AuthError):
    """The token is missing, malformed, badly signed or of the wrong type."""


class ExpiredTokenError(InvalidTokenError):
    """The token was valid once but its ``exp`` has passed."""


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    username: str
    role: Role
    expires_at: dt.datetime


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def get_user_by_name(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def create_user(session: Session, username: str, password: str, role: Role | str) -> User:
    """Add an account; raises :class:`UserExistsError` when the username is taken."""
    username = username.strip()
    if not username:
        raise ValueError("username must not be empty")
    if len(username) > 64:
        raise ValueError("username must be at most 64 characters")
    if not password:
        raise ValueError("password must not be empty")
    role = Role(role)
    if get_user_by_name(session, username) is not None:
        raise UserExistsError(username)
    user = User(username=username, password_hash=hash_password(password), role=role)
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError as exc:  # created concurrently
        raise UserExistsError(username) from exc
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """Replace a user's password; raises ``LookupError`` when there is no such user."""
    if not password:
        raise ValueError("password must not be empty")
    user = get_user_by_name(session, username.strip())
    if user is None:
        raise LookupError(f"no user named {username!r}")
    user.password_hash = hash_password(password)
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with these credentials, or ``None``. Upgrades an outdated hash in place."""
    user = get_user_by_name(session, username.strip()) if username else None
    if user is None:
        _hasher.verify(password, _DUMMY_HASH)
        return None
    valid, new_hash = _hasher.verify_and_update(password, user.password_hash)
    if not valid or not user.active:
        return None
    if new_hash is not None:
        user.password_hash = new_hash
    return user


def audited_username(username: str) -> str:
    """The user name as a sign-in attempt records it in the audit trail (and as throttling counts it)."""
    return username.strip()[:64]


def login_throttle(
    session: Session, username: str, client: str, settings: Settings, now: dt.datetime | None = None
) -> int | None:
    """Seconds to wait before *username* may try to sign in from *client*, or ``None`` if it may now.

    Locked when the audit trail holds ``settings.login_max_failures`` failed attempts within the last
    ``settings.login_lockout_minutes`` for this user name, or from this client address. The wait
    lasts until enough of those failures leave the window for the count to drop below the limit
    (normally: until the oldest counted one does). Successful sign-ins do not reset the count.
    An empty client address (none known) is not counted, so unknown peers do not lock each other.
    """
    now = now or utcnow()
    window = dt.timedelta(minutes=settings.login_lockout_minutes)
    since = now - window
    waits: list[int] = []
    for column, value in ((AuditEvent.username, audited_username(username)), (AuditEvent.client, client)):
        if column is AuditEvent.client and not value:
            continue
        # The max-th most recent failure in the window: while it is there, the limit is reached.
        nth = session.scalars(
            select(AuditEvent.at)
            .where(AuditEvent.action == LOGIN_FAILED, column == value, AuditEvent.at > since)
            .order_by(AuditEvent.at.desc())
            .offset(settings.login_max_failures - 1)
            .limit(1)
        ).first()
        if nth is not None:
            waits.append(math.ceil((nth + window - now).total_seconds()))
    return max(1, *waits) if waits else None


def issue_token(settings: Settings, user: User, now: dt.datetime | None = None) -> str:
    """A signed access token for *user*, valid for ``settings.access_token_minutes``."""
    now = now or utcnow()
    claims = {
        "sub": str(user.id),
        "name": user.username,
        "role": str(user.role),
        "typ": TOKEN_TYPE,
        "iat": int(now.timestamp()),
        "exp": int((now + dt.timedelta(minutes=settings.access_token_minutes)).timestamp()),
    }
    return jwt.encode(claims, settings.signing_key(), algorithm=TOKEN_ALGORITHM)


def decode_token(settings: Settings, token: str) -> TokenClaims:
    """Verify signature, expiry and shape; raises :class:`InvalidTokenError` (or its subclass
    :class:`ExpiredTokenError`)."""
    try:
        payload = jwt.decode(
            token,
            settings.signing_key(),
            algorithms=[TOKEN_ALGORITHM],
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise ExpiredTokenError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidTokenError("invalid token") from exc
    if payload.get("typ") != TOKEN_TYPE:
        raise InvalidTokenError("invalid token type")
    try:
        return TokenClaims(
            user_id=int(payload["sub"]),
            username=str(payload["name"]),
            role=Role(payload["role"]),
            expires_at=dt.datetime.fromtimestamp(int(payload["exp"]), dt.UTC),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidTokenError("invalid token claims") from exc
