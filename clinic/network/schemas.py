"""Request and response bodies of the remote-AE admin API (``/api/admin/dicom/aes``)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RetrieveMethod = Literal["move", "get"]


class AECreate(BaseModel):
    """A new remote AE. AE title: PS3.5 §6.2, at most 16 characters, no backslash."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    description: str = ""
    enabled: bool = True
    may_store: bool = True
    receives_results: bool = False
    query_priors: bool = False
    retrieve_method: RetrieveMethod = "move"


class AEUpdate(BaseModel):
    """The fields to change; a field left out keeps its value (``ae_title`` renames the AE)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str | None = Field(default=None, min_length=1, max_length=16)
    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    description: str | None = None
    enabled: bool | None = None
    may_store: bool | None = None
    receives_results: bool | None = None
    query_priors: bool | None = None
    retrieve_method: RetrieveMethod | None = None


class AEOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    ae_title: str
    host: str
    port: int
    description: str
    enabled: bool
    may_store: bool
    receives_results: bool
    query_priors: bool
    retrieve_method: str
    created_at: dt.datetime
    updated_at: dt.datetime
