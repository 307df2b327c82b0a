"""The transactional outbox (DESIGN.md §4 rule 2)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class OutboxMessage(Base):
    """Background work written in the same transaction as the state change that needs it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Celery task name, e.g. "clinic.analyse_study".
    task: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(64))
    kwargs: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    #: 0-9 (Celery/AMQP message priority); higher is sooner.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
