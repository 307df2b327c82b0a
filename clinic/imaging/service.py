"""Recording received instances and deciding when a series (and so a study) is complete."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.imaging.models import Instance, ReceiveFailure, ReceiveStatus, Series, Study
from clinic.orders.service import link_study_to_order
from clinic.patients.service import PatientDemographics, upsert_patient


@dataclass(frozen=True)
class InstanceMeta:
    """What the domain needs to know of a stored instance; built by the protocol adapters."""

    patient: PatientDemographics
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    file_size: int
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    accession_number: str = ""
    study_date: dt.date | None = None
    study_description: str = ""
    rows: int | None = None
    columns: int | None = None
    calling_ae: str = ""


def _get_or_create(session: Session, model: type, key: str, value: str, **fields: object) -> object:
    row = session.scalars(select(model).where(getattr(model, key) == value)).one_or_none()
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = model(**{key: value}, **fields)
            session.add(row)
            session.flush()
    except IntegrityError:  # created concurrently by another association or process
        row = session.scalars(select(model).where(getattr(model, key) == value)).one()
    return row


@dataclass(frozen=True)
class RecordedInstance:
    """Ids of the rows an indexed instance belongs to."""

    instance_id: int
    series_id: int
    study_id: int
    patient_id: int


def record_instance(session: Session, meta: InstanceMeta, now: dt.datetime | None = None) -> RecordedInstance:
    """Index a stored instance; a re-sent SOP instance replaces the earlier copy's row.

    A new instance re-opens its series and study: they are complete again only after a new
    quiet period. This runs once per received instance inside the SCP's store-then-acknowledge
    window, so the common case (the series exists) is four Core statements instead of the ORM's
    look-ups and savepoints: the C-STORE ingest benchmark found the ORM version to be over half
    of the SCP's CPU time per instance.
    """
    now = now or utcnow()
    known = session.execute(
        select(Series.id, Series.study_id, Study.patient_id)
        .join(Study, Study.id == Series.study_id)
        .where(Series.series_uid == meta.series_uid)
    ).first()
    if known is None:
        series_id, study_id, patient_id = _create_parents(session, meta, now)
    else:
        series_id, study_id, patient_id = known
    reopen = {"last_received_at": now, "status": ReceiveStatus.RECEIVING, "completed_at": None}
    session.execute(update(Series).where(Series.id == series_id).values(**reopen))
    session.execute(update(Study).where(Study.id == study_id).values(**reopen))
    values = {
        "sop_instance_uid": meta.sop_instance_uid,
        "sop_class_uid": meta.sop_class_uid,
        "series_id": series_id,
        "instance_number": meta.instance_number,
        "transfer_syntax_uid": meta.transfer_syntax_uid,
        "file_path": meta.file_path,
        "file_size": meta.file_size,
        "rows": meta.rows,
        "columns": meta.columns,
        "calling_ae": meta.calling_ae,
        "received_at": now,
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    upsert = insert(Instance).values(**values)
    statement = upsert.on_conflict_do_update(
        index_elements=[Instance.sop_instance_uid],
        set_={k: upsert.excluded[k] for k in values if k != "sop_instance_uid"},
    ).returning(Instance.id)
    instance_id = session.execute(statement).scalar_one()
    # Keep ORM objects already loaded in this session (tests, the web app) in step with the rows.
    for model, key in ((Series, series_id), (Study, study_id)):
        loaded = session.identity_map.get(session.identity_key(model, key))
        if loaded is not None:
            session.expire(loaded)
    return RecordedInstance(instance_id, series_id, study_id, patient_id)


def _create_parents(session: Session, meta: InstanceMeta, now: dt.datetime) -> tuple[int, int, int]:
    """The first instance of a series: patient, study and series, safe against concurrent firsts."""
    patient = upsert_patient(session, meta.patient)
    study = _get_or_create(
        session,
        Study,
        "study_uid",
        meta.study_uid,
        patient_id=patient.id,
        accession_number=meta.accession_number,
        study_date=meta.study_date,
        description=meta.study_description,
        received_at=now,
        last_received_at=now,
    )
    assert isinstance(study, Study)
    series = _get_or_create(
        session,
        Series,
        "series_uid",
        meta.series_uid,
        study_id=study.id,
        modality=meta.modality,
        body_part=meta.body_part,
        view_position=meta.view_position,
        series_number=meta.series_number,
        description=meta.series_description,
        received_at=now,
        last_received_at=now,
    )
    assert isinstance(series, Series)
    # An imaging order placed before its images (HL7 ORM/OMI) is linked now, by UID or accession
    # number; one indexed query per new series, none per instance.
    link_study_to_order(session, study.id)
    return series.id, study.id, study.patient_id


def record_failure(
    session: Session,
    *,
    channel: str,
    status_code: int,
    reason: str,
    calling_ae: str = "",
    sop_class_uid: str = "",
    sop_instance_uid: str = "",
) -> ReceiveFailure:
    failure = ReceiveFailure(
        channel=channel,
        status_code=status_code,
        reason=reason[:2000],
        calling_ae=calling_ae,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
    )
    session.add(failure)
    return failure


def complete_quiet_series(
    session: Session, quiet: dt.timedelta, now: dt.datetime | None = None
) -> list[Study]:
    """Mark series without a new instance for *quiet* as complete; return studies now complete.

    A study is complete when every one of its series is.
    """
    now = now or utcnow()
    cutoff = now - quiet
    quiet_series = session.scalars(
        select(Series)
        .where(Series.status == ReceiveStatus.RECEIVING, Series.last_received_at <= cutoff)
        .with_for_update(skip_locked=True)
    ).all()
    touched: dict[int, Study] = {}
    for series in quiet_series:
        series.status = ReceiveStatus.COMPLETE
        series.completed_at = now
        touched[series.study_id] = series.study
    completed: list[Study] = []
    for study in touched.values():
        if study.status == ReceiveStatus.COMPLETE:
            continue
        if all(s.status == ReceiveStatus.COMPLETE for s in study.series):
            study.status = ReceiveStatus.COMPLETE
            study.completed_at = now
            completed.append(study)
    session.flush()
    return completed


def study_instances(session: Session, study_id: int) -> Sequence[tuple[Series, Instance]]:
    rows = session.execute(
        select(Series, Instance)
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    return [(row[0], row[1]) for row in rows]
