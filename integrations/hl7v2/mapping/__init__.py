"""Inbound HL7 v2 mappings: one stored message -> domain commands, in the caller's unit of work.

The processing loop (:mod:`integrations.hl7v2.processor`) calls :func:`process_message` for each
stored message in arrival order, commits on success and marks the message processed with the notes
returned; a :class:`~integrations.hl7v2.errors.MappingError` is a permanent content fault (the
message is marked failed with its reason and can be replayed); any other exception is left to the
loop (e.g. the database away: try again later). Nothing here commits.

Supported (message code, trigger) pairs are :data:`SUPPORTED`; :data:`REQUIRED_FIELDS` names the
fields the door checks before it acknowledges (so an ADT without PID-3 gets AE at once rather than
failing later). How messages are read, and why not with hl7apy: :mod:`.parse`.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from clinic.messages.models import HL7Message
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.mapping import adt, orders, vitals
from integrations.hl7v2.mapping.common import Context, forget
from integrations.hl7v2.mapping.parse import Message
from integrations.hl7v2.tables import ErrorCode

__all__ = ["REQUIRED_FIELDS", "SUPPORTED", "map_message", "process_message"]

_Mapper = Callable[[Session, Message, Context], None]

_MAPPERS: dict[tuple[str, str], _Mapper] = {
    **{("ADT", trigger): adt.map_adt for trigger in adt.TRIGGERS},
    **{
        (code, trigger): orders.map_order
        for code, triggers in orders.TRIGGERS.items()
        for trigger in triggers
    },
    **{("ORU", trigger): vitals.map_vitals for trigger in vitals.TRIGGERS},
}

#: (MSH-9.1 message code, MSH-9.2 trigger event) pairs this receiver maps.
SUPPORTED: frozenset[tuple[str, str]] = frozenset(_MAPPERS)

#: Per message code, the fields that must not be empty (HL7 "SEG-n" locations).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "ADT": ("PID-3",),
    "ORM": ("PID-3", "ORC-1"),
    "OMI": ("PID-3", "ORC-1"),
    "ORU": ("PID-3", "OBX-3"),
}


def map_message(session: Session, message: Message, message_id: int | None = None) -> str:
    """Map a parsed message; returns the notes ("" when there is nothing to report)."""
    mapper = _MAPPERS.get((message.code, message.trigger))
    if mapper is None:
        supported = sorted(f"{c}^{t}" for c, t in SUPPORTED)
        code = (
            ErrorCode.UNSUPPORTED_EVENT_CODE
            if any(c == message.code for c, _ in SUPPORTED)
            else ErrorCode.UNSUPPORTED_MESSAGE_TYPE
        )
        raise MappingError(
            f"{message.code}^{message.trigger} is not mapped (supported: {', '.join(supported)})",
            code=code,
            location="MSH-9",
        )
    ctx = Context(message_id)
    if mapper is not vitals.map_vitals:
        forget(session)  # identities and visits may change: vitals look them up again
    mapper(session, message, ctx)
    session.flush()
    return "; ".join(ctx.notes)


def process_message(session: Session, message: HL7Message) -> str:
    """Map one stored message into the domain in the caller's unit of work; return notes (e.g.
    ``unknown observation codes kept: MDC 150023``); raise
    :class:`~integrations.hl7v2.errors.MappingError` for a permanent content fault."""
    parsed = Message.from_stored(message.raw, message.charset)
    return map_message(session, parsed, message.id)
