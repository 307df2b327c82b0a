"""Priors: a patient's previous studies of the same modality, fetched from a PACS for comparison.

The flow (the protocol work lives in ``integrations.dicom.qr``, the task in ``worker``):

1. :func:`request_priors`: when a study completes, the relay writes the outbox row of
   ``clinic.fetch_priors(study_id)`` in the unit of work that completes it (DESIGN.md §4 rule 2),
   and only for a study received as new work, never for a prior (no recursion) and only while a
   PACS is configured as a prior source (``clinic.network.service.prior_sources``). Never from the
   C-STORE handler: a listener stores and answers; the query is work for a task.
2. :func:`prior_query`: what the task needs, as plain values (patient, modalities, sources).
3. :func:`select_priors` (pure): of the C-FIND matches, the studies that are not the current one,
   share a modality with it and are older by Study Date (unknown dates last); newest first, at most
   ``settings.priors_limit``.
4. :func:`plan_priors`: records a :class:`StudyPrior` row per chosen study and, BEFORE anything is
   retrieved, the prior's :class:`Study` row flagged ``is_prior`` (with its patient), so that the
   arriving instances land in it (``record_instance`` finds the study by UID and never changes the
   flag) and the relay never asks for its analysis. A study we already hold is marked fetched
   without a retrieve.
5. :func:`mark_fetched` / :func:`mark_failed` / :func:`mark_retrying` after each C-MOVE/C-GET.

A source that cannot be queried is reported on one row per study whose ``prior_study_uid`` is
empty (:data:`QUERY_ROW_UID`): ``pending`` while the task retries, ``failed`` when it gave up,
removed once every source answered; so a PACS that is down is visible on the study's page.

The caller owns the transaction (STYLE.md): nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.imaging.models import Instance, PriorStatus, ReceiveStatus, Series, Study, StudyPrior
from clinic.network.service import prior_sources
from clinic.outbox import service as outbox
from clinic.outbox.models import OutboxMessage

#: Celery task name of the priors fetch (the worker defines it under this name).
FETCH_PRIORS_TASK = "clinic.fetch_priors"
#: ``prior_study_uid`` of the row that reports a failed query (C-FIND) of the prior sources.
QUERY_ROW_UID = ""

# Column sizes of study_priors / studies; longer values are clipped, never refused.
_MODALITY_LEN = 16
_TEXT_LEN = 200
_ACCESSION_LEN = 64


@dataclass(frozen=True)
class PriorSource:
    """A PACS to query (``remote_aes`` with ``query_priors``), as plain values for the task."""

    ae_title: str
    host: str
    port: int
    #: ``move`` (C-MOVE to our AE title) or ``get`` (C-GET on the query's association).
    retrieve_method: str


@dataclass(frozen=True)
class PriorQuery:
    """What the task needs to look for a study's priors, read in one short unit of work."""

    study_id: int
    study_uid: str
    #: Internal id of the patient: the owner of the prior Study rows.
    patient_id: int
    #: Patient ID (0010,0020) and Issuer of Patient ID (0010,0021): PHI, never logged.
    patient_identifier: str
    patient_issuer: str
    modalities: tuple[str, ...]
    study_date: dt.date | None
    sources: tuple[PriorSource, ...]
    limit: int


@dataclass(frozen=True)
class Candidate:
    """A study of the patient that a source's C-FIND returned."""

    study_uid: str
    study_date: dt.date | None
    description: str
    modalities: tuple[str, ...]
    accession_number: str
    source_ae: str


@dataclass(frozen=True)
class PlannedRetrieve:
    """A prior to retrieve: its StudyPrior row, the pre-created Study row and where it is."""

    prior_id: int
    prior_study_id: int
    study_uid: str
    source_ae: str


@dataclass(frozen=True)
class PriorInfo:
    """A prior as the radiologist sees it (or the report of a source that could not be queried)."""

    prior_id: int
    prior_study_uid: str
    study_date: dt.date | None
    modality: str
    description: str
    status: PriorStatus
    error: str
    source_ae: str
    fetched_at: dt.datetime | None
    #: Our Study row of the prior when it holds instances (the page to link to), else ``None``.
    prior_study_id: int | None

    @property
    def is_query_report(self) -> bool:
        return self.prior_study_uid == QUERY_ROW_UID


# --- 1. the trigger --------------------------------------------------------------------------------


def request_priors(session: Session, study: Study, queue: str) -> OutboxMessage | None:
    """Ask for the priors of a newly completed *study* in the caller's unit of work.

    Nothing for a prior itself (its completion must not fetch priors of priors) or when no PACS
    is configured as a prior source.
    """
    if study.is_prior or not prior_sources(session):
        return None
    return outbox.enqueue(session, FETCH_PRIORS_TASK, queue, {"study_id": study.id})


# --- 2. and 3. what to look for, what to keep -------------------------------------------------------


def prior_query(session: Session, study_id: int, limit: int) -> PriorQuery | None:
    """The query for *study_id*'s priors; ``None`` for a missing study or a prior study."""
    study = session.get(Study, study_id)
    if study is None or study.is_prior:
        return None
    modalities = session.scalars(
        select(Series.modality).where(Series.study_id == study_id).order_by(Series.id)
    ).all()
    sources = tuple(
        PriorSource(ae.ae_title, ae.host, ae.port, ae.retrieve_method) for ae in prior_sources(session)
    )
    return PriorQuery(
        study_id=study.id,
        study_uid=study.study_uid,
        patient_id=study.patient_id,
        patient_identifier=study.patient.identifier,
        patient_issuer=study.patient.issuer,
        modalities=tuple(dict.fromkeys(m.strip().upper() for m in modalities if m and m.strip())),
        study_date=study.study_date,
        sources=sources,
        limit=limit,
    )


def _is_older(candidate: Candidate, current: dt.date | None) -> bool:
    # An undated match may be older: kept, ranked last. Same-day studies are not priors: without
    # the study times we cannot tell which came first.
    if candidate.study_date is None or current is None:
        return True
    return candidate.study_date < current


def select_priors(query: PriorQuery, candidates: Iterable[Candidate]) -> list[Candidate]:
    """The priors to show: other studies sharing a modality, older, newest first, at most the limit.

    A match that lists no Modalities in Study is kept: the PACS matched it on the modality key.
    The first source to return a study wins when several hold it.
    """
    wanted = set(query.modalities)
    seen: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.study_uid == query.study_uid or candidate.study_uid in seen:
            continue
        if candidate.modalities and not wanted & set(candidate.modalities):
            continue
        if _is_older(candidate, query.study_date):
            seen[candidate.study_uid] = candidate
    ordered = sorted(
        seen.values(),
        key=lambda c: (c.study_date is None, -(c.study_date.toordinal() if c.study_date else 0)),
    )
    return ordered[: max(query.limit, 0)]


# --- 4. recording the plan before retrieving ---------------------------------------------------------


def instance_count(session: Session, study_uid: str) -> int:
    """How many instances of the study *study_uid* we hold."""
    return int(
        session.scalar(
            select(func.count(Instance.id))
            .join(Series, Series.id == Instance.series_id)
            .join(Study, Study.id == Series.study_id)
            .where(Study.study_uid == study_uid)
        )
        or 0
    )


def _prior_row(session: Session, study_id: int, prior_uid: str) -> StudyPrior:
    row = session.scalars(
        select(StudyPrior).where(StudyPrior.study_id == study_id, StudyPrior.prior_study_uid == prior_uid)
    ).one_or_none()
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = StudyPrior(study_id=study_id, prior_study_uid=prior_uid)
            session.add(row)
            session.flush()
    except IntegrityError:  # a redelivered task is planning the same study at once
        row = session.scalars(
            select(StudyPrior).where(StudyPrior.study_id == study_id, StudyPrior.prior_study_uid == prior_uid)
        ).one()
    return row


def _held(session: Session, study: Study | None) -> bool:
    """Whether we hold *study* already: received as new work, or fetched complete as a prior."""
    if study is None or instance_count(session, study.study_uid) == 0:
        return False
    if not study.is_prior:
        return True
    fetched = session.scalar(
        select(func.count(StudyPrior.id)).where(
            StudyPrior.prior_study_uid == study.study_uid, StudyPrior.status == PriorStatus.FETCHED
        )
    )
    return bool(fetched)


def _prior_study(session: Session, query: PriorQuery, candidate: Candidate, now: dt.datetime) -> Study:
    """The Study row the prior's instances will land in, created flagged ``is_prior`` if missing."""
    study = session.scalars(select(Study).where(Study.study_uid == candidate.study_uid)).one_or_none()
    if study is not None:
        return study
    try:
        with session.begin_nested():
            study = Study(
                study_uid=candidate.study_uid,
                patient_id=query.patient_id,
                accession_number=candidate.accession_number[:_ACCESSION_LEN],
                study_date=candidate.study_date,
                description=candidate.description[:_TEXT_LEN],
                status=ReceiveStatus.RECEIVING,
                received_at=now,
                last_received_at=now,
                is_prior=True,
            )
            session.add(study)
            session.flush()
    except IntegrityError:  # its first instance arrived meanwhile (someone sent it to us)
        study = session.scalars(select(Study).where(Study.study_uid == candidate.study_uid)).one()
    return study


def plan_priors(
    session: Session, query: PriorQuery, chosen: Sequence[Candidate], now: dt.datetime | None = None
) -> list[PlannedRetrieve]:
    """Record the chosen priors and pre-create their studies; return those still to retrieve.

    Commit before retrieving: a C-MOVE's instances arrive through the SCP, in another unit of work
    and maybe another process, and must find the ``is_prior`` study there.
    """
    now = now or utcnow()
    planned: list[PlannedRetrieve] = []
    for candidate in chosen:
        row = _prior_row(session, query.study_id, candidate.study_uid)
        row.source_ae = candidate.source_ae[:16]
        row.prior_study_date = candidate.study_date
        row.modality = ", ".join(candidate.modalities or query.modalities)[:_MODALITY_LEN]
        row.description = candidate.description[:_TEXT_LEN]
        if row.status == PriorStatus.FETCHED:
            continue
        existing = session.scalars(select(Study).where(Study.study_uid == candidate.study_uid)).one_or_none()
        if _held(session, existing):
            _mark(row, PriorStatus.FETCHED, "already stored here; not retrieved again", now)
            continue
        study = _prior_study(session, query, candidate, now)
        row.status = PriorStatus.PENDING
        planned.append(PlannedRetrieve(row.id, study.id, candidate.study_uid, candidate.source_ae))
    session.flush()
    return planned


# --- 5. outcomes ----------------------------------------------------------------------------------------


def _mark(row: StudyPrior, status: PriorStatus, note: str, now: dt.datetime | None = None) -> None:
    row.status = status
    row.error = note[:2000]
    if status == PriorStatus.FETCHED:
        row.fetched_at = now or utcnow()


def mark_fetched(session: Session, prior_id: int, note: str = "") -> None:
    """Retrieved (C-MOVE/C-GET completed); *note* keeps a warning such as failed sub-operations."""
    row = session.get(StudyPrior, prior_id)
    if row is not None:
        _mark(row, PriorStatus.FETCHED, note)


def mark_failed(session: Session, prior_id: int, reason: str) -> None:
    """The PACS said no (or the retries ran out): failed, with the reason, for all to see."""
    row = session.get(StudyPrior, prior_id)
    if row is not None:
        _mark(row, PriorStatus.FAILED, reason)


def mark_retrying(session: Session, prior_id: int, reason: str) -> None:
    """A transient fault: the row stays pending with the reason while the task retries."""
    row = session.get(StudyPrior, prior_id)
    if row is not None:
        _mark(row, PriorStatus.PENDING, f"retrying: {reason}")


def report_query_problem(session: Session, study_id: int, source_ae: str, reason: str, final: bool) -> None:
    """Show that a source could not be queried: pending while retrying, failed when given up."""
    row = _prior_row(session, study_id, QUERY_ROW_UID)
    row.source_ae = source_ae[:16]
    row.description = "query of the prior sources"
    _mark(
        row, PriorStatus.FAILED if final else PriorStatus.PENDING, reason if final else f"retrying: {reason}"
    )


def clear_query_problem(session: Session, study_id: int) -> None:
    """Every source answered: the report of an earlier failed query goes."""
    row = session.scalars(
        select(StudyPrior).where(StudyPrior.study_id == study_id, StudyPrior.prior_study_uid == QUERY_ROW_UID)
    ).one_or_none()
    if row is not None:
        session.delete(row)


# --- the radiologist's view ------------------------------------------------------------------------------


def list_priors(session: Session, study_id: int) -> list[PriorInfo]:
    """The priors of *study_id*: a query report first, then newest first (undated last)."""
    rows = session.scalars(select(StudyPrior).where(StudyPrior.study_id == study_id)).all()
    uids = [r.prior_study_uid for r in rows if r.prior_study_uid]
    held: dict[str, int] = {}
    if uids:
        held = {
            uid: sid
            for uid, sid in session.execute(
                select(Study.study_uid, Study.id)
                .join(Series, Series.study_id == Study.id)
                .join(Instance, Instance.series_id == Series.id)
                .where(Study.study_uid.in_(uids))
                .distinct()
            )
        }
    infos = [
        PriorInfo(
            prior_id=r.id,
            prior_study_uid=r.prior_study_uid,
            study_date=r.prior_study_date,
            modality=r.modality,
            description=r.description,
            status=PriorStatus(r.status),
            error=r.error,
            source_ae=r.source_ae,
            fetched_at=r.fetched_at,
            prior_study_id=held.get(r.prior_study_uid),
        )
        for r in rows
    ]
    infos.sort(
        key=lambda p: (
            not p.is_query_report,
            p.study_date is None,
            -(p.study_date.toordinal() if p.study_date else 0),
            p.prior_id,
        )
    )
    return infos
