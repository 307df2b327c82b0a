"""Recording observations (vital signs from HL7 ORU^R01, later FHIR Observation), idempotently.

The natural key is (patient, source system, source code, observed at, device): a message processed
twice, or re-sent by a gateway under a new control id, leaves one row per observation; a corrected
result (HL7 OBX-11 ``C``) replaces the value under the same key. One
``INSERT ... ON CONFLICT DO UPDATE`` executed with the message's rows keeps an 11-OBX ORU at one
statement.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import cast

from sqlalchemy import Insert, Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.observations.models import Observation

#: The unique key of ``observations`` (uq_observations_natural).
NATURAL_KEY = ("patient_id", "source_system", "source_code", "observed_at", "device")
_UPDATED = (
    "encounter_id",
    "code",
    "source_display",
    "value",
    "value_text",
    "unit",
    "status",
    "source",
    "message_id",
    "recorded_at",
)


@dataclass(frozen=True)
class ObservationIn:
    patient_id: int
    source_code: str
    observed_at: dt.datetime
    #: a ``VitalSign`` value, or "" for a code we do not know (kept, reported by the caller).
    code: str = ""
    source_system: str = ""
    source_display: str = ""
    value: float | None = None
    value_text: str = ""
    unit: str = ""
    device: str = ""
    status: str = "final"
    encounter_id: int | None = None
    source: str = "hl7v2"
    message_id: int | None = None


_FIELDS = tuple(f.name for f in fields(ObservationIn))
_SIZES = {
    "source_code": 64,
    "source_system": 32,
    "source_display": 200,
    "value_text": 200,
    "unit": 32,
    "device": 128,
}


def record_observations(session: Session, observations: Sequence[ObservationIn]) -> int:
    """Insert or update *observations* by their natural key; returns how many rows were written."""
    if not observations:
        return 0
    now = utcnow()
    rows: dict[tuple[object, ...], dict[str, object]] = {}
    for obs in observations:
        row = {name: getattr(obs, name) for name in _FIELDS}  # dataclasses.asdict deep-copies: slow
        for name, size in _SIZES.items():
            row[name] = str(row[name])[:size]
        row["recorded_at"] = now
        rows[tuple(row[k] for k in NATURAL_KEY)] = row  # the last of duplicates in one batch wins
    session.execute(_upsert(session.get_bind().dialect.name), list(rows.values()))
    return len(rows)


@functools.cache
def _upsert(dialect: str) -> Insert:
    """One statement, executed with a list of rows: compiled once and cached, where a multi-row
    ``VALUES`` would be compiled anew for every message (measured: most of the mapping's time)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(cast(Table, Observation.__table__))
    return statement.on_conflict_do_update(
        index_elements=list(NATURAL_KEY), set_={k: statement.excluded[k] for k in _UPDATED}
    )


def observations_for(session: Session, patient_id: int, code: str | None = None) -> list[Observation]:
    """A patient's observations, oldest first (only *code* when given; "" lists the unknown ones)."""
    query = select(Observation).where(Observation.patient_id == patient_id)
    if code is not None:
        query = query.where(Observation.code == code)
    return list(session.scalars(query.order_by(Observation.observed_at, Observation.id)))
