"""Wire shapes of the auth API."""

from __future__ import annotations

from pydantic import BaseModel

from clinic.auth.models import Role


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class UserOut(BaseModel):
    id: int
    username: str
    role: Role
    home: str
