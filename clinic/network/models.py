"""Remote DICOM application entities: who may store to us, where results go, where priors live."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class RemoteAE(Base):
    """A peer known by AE title (PS3.8 §7.1: up to 16 characters, no backslash or control chars).

    Permissions are per AE: ``may_store`` lets it C-STORE/STOW to us when the allow-list is on
    (``CLINIC_DICOM_ALLOWLIST``); ``receives_results`` makes it a destination of our AI result
    objects (SR, SEG); ``query_priors`` makes it a PACS we ask (C-FIND, then C-MOVE or C-GET) for a
    patient's previous studies.
    """

    __tablename__ = "remote_aes"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    may_store: Mapped[bool] = mapped_column(Boolean, default=True)
    receives_results: Mapped[bool] = mapped_column(Boolean, default=False)
    query_priors: Mapped[bool] = mapped_column(Boolean, default=False)
    #: "move" (C-MOVE to our own AE title) or "get" (C-GET on the same association).
    retrieve_method: Mapped[str] = mapped_column(String(8), default="move")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
