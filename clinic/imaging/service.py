"""Recording received instances and deciding when a series (and so a study) is complete."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.imaging.models import Instance, ReceiveFailure, ReceiveStatus, Series, Study
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


def record_instance(session: Session, meta: InstanceMeta, now: dt.datetime | None = None) -> Instance:
    """Index a stored instance; a re-sent SOP instance replaces the earlier copy's row.

    A new instance re-opens its series and study: they are complete again only after a new
    quiet period.
    """
    now = now or utcnow()
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
    for parent in (study, series):
        parent.last_received_at = now
        parent.status = ReceiveStatus.RECEIVING
        parent.completed_at = None

    instance = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == meta.sop_instance_uid)
    ).one_or_none()
    if instance is None:
        instance = Instance(sop_instance_uid=meta.sop_instance_uid)
        session.add(instance)
    instance.sop_class_uid = meta.sop_class_uid
    instance.series_id = series.id
    instance.instance_number = meta.instance_number
    instance.transfer_syntax_uid = meta.transfer_syntax_uid
    instance.file_path = meta.file_path
    instance.file_size = meta.file_size
    instance.rows = meta.rows
    instance.columns = meta.columns
    instance.calling_ae = meta.calling_ae
    instance.received_at = now
    session.flush()
    return instance


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


def get_study(session: Session, study_id: int) -> Study | None:
    return session.get(Study, study_id)


def study_instances(session: Session, study_id: int) -> Sequence[tuple[Series, Instance]]:
    rows = session.execute(
        select(Series, Instance)
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    return [(row[0], row[1]) for row in rows]
