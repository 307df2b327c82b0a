"""AI result objects and their delivery to the PACS: durable, through the outbox (DESIGN.md §4).

The path of a result:

1. The unit of work that records an AI read also enqueues ``clinic.build_results(read_id)``
   (:func:`request_results`).
2. The task builds the objects (TID 1500 SR, SEG when the read has a mask), writes their files and
   calls :func:`record_result_objects`: in one unit of work each object becomes an instance of its
   study (served like any other), a :class:`ResultObject`, and one :class:`Delivery` with its
   ``clinic.deliver_result(delivery_id)`` outbox row per destination AE. A second run for the same
   read finds the objects and creates nothing. A build that fails for good is noted on the read
   (:func:`record_build_failure`, listed by :func:`list_build_failures`); the unit of work of a
   later successful build clears it.
3. ``clinic.deliver_result`` claims the delivery (:func:`claim_delivery`: an attempt row marked
   ``running``), sends, and records the outcome (:func:`finish_attempt`): sent, refused for good
   (``failed``, replayable with :func:`resend_study`) or a transient fault, after which the delivery
   stays ``pending`` until ``next_attempt_at`` (exponential backoff) and the relay's sweep
   (:func:`requeue_due_deliveries`) hands it out again. A destination that is down delays results
   and loses none; a lost broker message is handed out again when its hand-out lease runs out.

A delivery's ``next_attempt_at`` is always "when to hand it out again if nothing else happens":
the backoff after a transient fault, or a lease while a message is on its way or an attempt runs.
The caller owns the transaction: nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from clinic.ai.models import AIRead
from clinic.db import utcnow
from clinic.imaging.models import Instance, ReceiveStatus, Series, Study
from clinic.imaging.service import InstanceMeta, record_instance
from clinic.network.models import RemoteAE
from clinic.network.service import result_destinations
from clinic.outbox import service as outbox
from clinic.outbox.models import OutboxMessage
from clinic.results.models import Delivery, DeliveryAttempt, DeliveryStatus, ResultKind, ResultObject
from clinic.settings import Settings

#: Celery task names (the worker defines the tasks under these names) and their queue.
BUILD_RESULTS_TASK = "clinic.build_results"
DELIVER_RESULT_TASK = "clinic.deliver_result"
OUTBOUND_QUEUE = "outbound"

#: How long a started attempt owns its delivery. One C-STORE of one object is bounded by the SCU's
#: timeouts (association 30 s, DIMSE 120 s, network 60 s); past this the worker is taken as lost.
ATTEMPT_LEASE = dt.timedelta(seconds=300)
#: Series Number of the first result series of a study (later ones count up from the study's
#: highest), out of the range modalities use.
RESULT_SERIES_NUMBER = 9901
#: Modalities whose series a model reads as one volume (PS3.3 C.7.3.1.1.1 defined terms).
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
#: Sweep batch: deliveries handed out again per relay pass.
REQUEUE_BATCH = 100


class AttemptOutcome(StrEnum):
    RUNNING = "running"  # started, not finished (or its worker died: see ATTEMPT_LEASE)
    SUCCESS = "success"
    TRANSIENT = "transient"  # will be tried again
    PERMANENT = "permanent"  # refused; the delivery is failed until replayed


class ResultsError(Exception):
    """Base of the results slice's errors."""


class UnknownStudyError(ResultsError, KeyError):
    def __init__(self, study_uid: str) -> None:
        super().__init__(f"no study with StudyInstanceUID {study_uid}")
        self.study_uid = study_uid

    def __str__(self) -> str:
        return str(self.args[0])


class SourceMissingError(ResultsError):
    """The instances a read was made from are not (or no longer) stored."""


def handout_lease(settings: Settings) -> dt.timedelta:
    """How long a handed-out delivery waits for its message to be taken before it is handed out
    again (the same bound as an analysis job's: a broker without persistence can lose messages)."""
    return dt.timedelta(seconds=settings.job_pending_timeout_seconds)


# --- building ------------------------------------------------------------------------------------


def request_results(session: Session, read_id: int, *, revise: bool = False) -> OutboxMessage:
    """Ask for the read's result objects, in the caller's unit of work (the read's own)."""
    kwargs: dict[str, object] = {"read_id": read_id}
    if revise:
        kwargs["revise"] = True
    return outbox.enqueue(session, BUILD_RESULTS_TASK, OUTBOUND_QUEUE, kwargs)


def objects_of_read(session: Session, read_id: int) -> list[ResultObject]:
    query = select(ResultObject).where(ResultObject.read_id == read_id).order_by(ResultObject.id)
    return list(session.scalars(query))


def latest_objects(objects: Iterable[ResultObject]) -> list[ResultObject]:
    """The objects no other object revises (the current version of each kind)."""
    items = list(objects)
    revised = {o.predecessor_sop_instance_uid for o in items if o.predecessor_sop_instance_uid}
    return [o for o in items if o.sop_instance_uid not in revised]


@dataclass(frozen=True)
class ReadSources:
    """What a builder needs of a read, as plain values read in one unit of work."""

    read: AIRead
    study_uid: str
    #: Files (relative to the data dir) of the instances the read was made from, in order.
    source_files: tuple[str, ...]
    #: The read's current objects, the predecessors of a revision: (kind, SOP instance UID, file).
    latest: tuple[tuple[ResultKind, str, str], ...]
    #: SOP instance UIDs of every object the read already has.
    existing: frozenset[str]
    #: Series number for a new result series: after every series the study has.
    next_series_number: int


def _reads_whole_series(session: Session, read: AIRead) -> bool:
    """A 3D read (of a whole series) rather than of one instance: it has a mask, names no
    instance, or its series is cross-sectional. A 2D model's read may name its series too."""
    if not read.series_uid:
        return False
    if read.mask_path or not read.sop_instance_uid:
        return True
    modality = session.scalar(select(Series.modality).where(Series.series_uid == read.series_uid))
    return (modality or "").upper() in VOLUME_MODALITIES


def read_sources(session: Session, read_id: int) -> ReadSources | None:
    """The read, its source instances (the read instance, or every instance of the read series
    for a 3D read) and its existing objects; ``None`` when there is no such read."""
    read = session.get(AIRead, read_id)
    if read is None:
        return None
    study = session.get(Study, read.study_id)
    assert study is not None  # a foreign key
    query = select(Instance.file_path).join(Series, Series.id == Instance.series_id)
    if _reads_whole_series(session, read):
        query = query.where(Series.series_uid == read.series_uid)
    else:
        query = query.where(Instance.sop_instance_uid == read.sop_instance_uid)
    files = tuple(session.scalars(query.order_by(Instance.instance_number, Instance.id)))
    if not files:
        what = f"series {read.series_uid}" if read.series_uid else f"instance {read.sop_instance_uid}"
        raise SourceMissingError(f"read {read_id}: {what} is not stored")
    objects = objects_of_read(session, read_id)
    latest = latest_objects(objects)
    ids = [o.instance_id for o in latest if o.instance_id is not None]
    rows = session.execute(select(Instance.id, Instance.file_path).where(Instance.id.in_(ids))).all()
    files_of = {instance_id: path for instance_id, path in rows}
    numbers = session.scalars(select(Series.series_number).where(Series.study_id == study.id))
    top = max((n for n in numbers if n is not None), default=0)
    return ReadSources(
        read=read,
        study_uid=study.study_uid,
        source_files=files,
        latest=tuple(
            (ResultKind(o.kind), o.sop_instance_uid, files_of[o.instance_id])
            for o in latest
            if o.instance_id in files_of
        ),
        existing=frozenset(o.sop_instance_uid for o in objects),
        next_series_number=max(top + 1, RESULT_SERIES_NUMBER),
    )


@dataclass(frozen=True)
class NewResultObject:
    """A written result object, to be recorded: its instance row and what it is."""

    kind: ResultKind
    meta: InstanceMeta
    predecessor_sop_instance_uid: str = ""


def record_derived_instance(session: Session, meta: InstanceMeta, now: dt.datetime | None = None) -> int:
    """Index an object we made ourselves as an instance of its study; its instance id.

    Unlike a received instance it re-opens nothing: its series is complete at once and the study
    keeps its receive state, so the relay's quiet-series sweep never sees a "new" series and never
    asks to analyse the study again because of its own results. The study row is locked first
    (PostgreSQL), so an image arriving at the same moment re-opens the study after us, not before.
    """
    now = now or utcnow()
    before = session.execute(
        select(Study.status, Study.completed_at, Study.last_received_at)
        .where(Study.study_uid == meta.study_uid)
        .with_for_update()
    ).first()
    recorded = record_instance(session, meta, now=now)
    session.execute(
        update(Series)
        .where(Series.id == recorded.series_id)
        .values(status=ReceiveStatus.COMPLETE, completed_at=now)
    )
    if before is not None:
        status, completed_at, last_received_at = before
        session.execute(
            update(Study)
            .where(Study.id == recorded.study_id)
            .values(status=status, completed_at=completed_at, last_received_at=last_received_at)
        )
    for model, key in ((Series, recorded.series_id), (Study, recorded.study_id)):
        loaded = session.identity_map.get(session.identity_key(model, key))
        if loaded is not None:
            session.expire(loaded)
    return recorded.instance_id


def record_result_objects(
    session: Session,
    read_id: int,
    objects: Sequence[NewResultObject],
    *,
    expected_existing: frozenset[str],
    handout_lease: dt.timedelta,
    now: dt.datetime | None = None,
) -> list[ResultObject] | None:
    """Record written objects of a read with their deliveries and outbox rows, in one unit of work.

    *expected_existing* is the set of the read's objects the builder saw. If it changed meanwhile (a
    concurrent run of the same task recorded its own), nothing is recorded and ``None`` is returned:
    the caller discards its files. The read row is locked first, so two runs cannot both pass.
    """
    now = now or utcnow()
    read = session.scalars(select(AIRead).where(AIRead.id == read_id).with_for_update()).one_or_none()
    if read is None:
        return None
    current = frozenset(o.sop_instance_uid for o in objects_of_read(session, read_id))
    if current != expected_existing:
        return None
    created: list[ResultObject] = []
    for new in objects:
        instance_id = record_derived_instance(session, new.meta, now)
        result = ResultObject(
            read_id=read_id,
            study_id=read.study_id,
            instance_id=instance_id,
            kind=new.kind,
            sop_class_uid=new.meta.sop_class_uid,
            sop_instance_uid=new.meta.sop_instance_uid,
            series_instance_uid=new.meta.series_uid,
            predecessor_sop_instance_uid=new.predecessor_sop_instance_uid,
            created_at=now,
        )
        session.add(result)
        created.append(result)
    session.flush()
    clear_build_failure(read)
    destinations = result_destinations(session)
    for result in created:
        for destination in destinations:
            _hand_out(session, _new_delivery(session, result, destination, now), now, handout_lease)
    return created


#: Longest reason kept for a failed build.
MAX_REASON = 2000


def record_build_failure(
    session: Session, read_id: int, reason: str, *, now: dt.datetime | None = None
) -> bool:
    """Note on the read that its result objects cannot be built, and why; False when there is no
    such read. *reason* names identifiers and the builder's complaint, never patient data (the
    caller's duty). Its own unit of work: the build's files and rows are not part of it."""
    read = session.scalars(select(AIRead).where(AIRead.id == read_id).with_for_update()).one_or_none()
    if read is None:
        return False
    read.results_error = (reason.strip() or "unknown error")[:MAX_REASON]
    read.results_failed_at = now or utcnow()
    return True


def clear_build_failure(read: AIRead) -> None:
    """A build succeeded: the read's earlier failure, if any, is over (in the build's unit of work)."""
    if read.results_error or read.results_failed_at is not None:
        read.results_error = ""
        read.results_failed_at = None


# --- delivering ----------------------------------------------------------------------------------


def _new_delivery(
    session: Session, result: ResultObject, destination: RemoteAE, now: dt.datetime
) -> Delivery:
    delivery = Delivery(
        result_object_id=result.id,
        remote_ae_id=destination.id,
        status=DeliveryStatus.PENDING,
        created_at=now,
        next_attempt_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery


def _hand_out(session: Session, delivery: Delivery, now: dt.datetime, lease: dt.timedelta) -> None:
    """An outbox row for the delivery; if its message is lost, the sweep hands it out after *lease*."""
    delivery.next_attempt_at = now + lease
    outbox.enqueue(session, DELIVER_RESULT_TASK, OUTBOUND_QUEUE, {"delivery_id": delivery.id})


@dataclass(frozen=True)
class DeliveryClaim:
    """A started attempt: what to send where, as plain values."""

    delivery_id: int
    attempt_id: int
    file_path: str
    sop_instance_uid: str
    ae_title: str
    host: str
    port: int


def _close_lost_attempts(delivery: Delivery, now: dt.datetime, lease: dt.timedelta) -> bool:
    """Mark attempts that ran past *lease* as lost; True when one is still running within it."""
    running = False
    for attempt in delivery.attempt_log:
        if attempt.outcome != AttemptOutcome.RUNNING:
            continue
        if attempt.at > now - lease:
            running = True
            continue
        attempt.outcome = AttemptOutcome.TRANSIENT
        attempt.error = "the attempt did not finish (worker lost?)"
        delivery.attempts += 1
    return running


def claim_delivery(
    session: Session, delivery_id: int, *, lease: dt.timedelta = ATTEMPT_LEASE, now: dt.datetime | None = None
) -> DeliveryClaim | None:
    """Start an attempt: ``None`` when the delivery is sent, failed, gone, or being attempted.

    A destination that no longer receives results (disabled, or its flag cleared) fails the
    delivery with that reason; ``resend`` replays it once the destination is back.
    """
    now = now or utcnow()
    delivery = session.scalars(
        select(Delivery).where(Delivery.id == delivery_id).with_for_update()
    ).one_or_none()
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return None
    if _close_lost_attempts(delivery, now, lease):
        return None
    destination = session.get(RemoteAE, delivery.remote_ae_id)
    result = session.get(ResultObject, delivery.result_object_id)
    assert destination is not None and result is not None  # foreign keys
    instance = session.get(Instance, result.instance_id) if result.instance_id is not None else None
    if not (destination.enabled and destination.receives_results) or instance is None:
        reason = (
            f"destination {destination.ae_title} does not receive results now"
            if instance is not None
            else f"object {result.sop_instance_uid} is not stored"
        )
        attempt = DeliveryAttempt(at=now, outcome=AttemptOutcome.PERMANENT, error=reason)
        delivery.attempt_log.append(attempt)
        delivery.attempts += 1
        delivery.status = DeliveryStatus.FAILED
        delivery.last_error = reason
        return None
    attempt = DeliveryAttempt(at=now, outcome=AttemptOutcome.RUNNING)
    delivery.attempt_log.append(attempt)
    delivery.next_attempt_at = now + lease
    session.flush()
    return DeliveryClaim(
        delivery_id=delivery.id,
        attempt_id=attempt.id,
        file_path=instance.file_path,
        sop_instance_uid=result.sop_instance_uid,
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
    )


def finish_attempt(
    session: Session,
    attempt_id: int,
    outcome: AttemptOutcome,
    *,
    status_code: int | None = None,
    error: str = "",
    duration_ms: float | None = None,
    backoff_s: float = 2.0,
    backoff_cap_s: float = 300.0,
    now: dt.datetime | None = None,
) -> Delivery | None:
    """Record how an attempt ended and move its delivery on (sent, failed, or wait and retry)."""
    now = now or utcnow()
    attempt = session.get(DeliveryAttempt, attempt_id)
    if attempt is None:
        return None
    delivery = session.scalars(
        select(Delivery).where(Delivery.id == attempt.delivery_id).with_for_update()
    ).one()
    was_running = attempt.outcome == AttemptOutcome.RUNNING
    attempt.outcome = outcome
    attempt.status_code = status_code
    attempt.error = error[:4000]
    attempt.duration_ms = duration_ms
    if was_running:  # else the sweep already counted it as lost
        delivery.attempts += 1
    if delivery.status != DeliveryStatus.PENDING:
        return delivery  # another attempt finished it meanwhile
    if outcome == AttemptOutcome.SUCCESS:
        delivery.status = DeliveryStatus.SENT
        delivery.sent_at = now
        delivery.last_error = ""
    elif outcome == AttemptOutcome.PERMANENT:
        delivery.status = DeliveryStatus.FAILED
        delivery.last_error = error[:4000]
    else:
        delivery.last_error = error[:4000]
        delivery.next_attempt_at = now + outbox.backoff(delivery.attempts, backoff_s, backoff_cap_s)
    return delivery


def requeue_due_deliveries(
    session: Session, handout_lease: dt.timedelta, now: dt.datetime | None = None
) -> list[int]:
    """Hand out again the pending deliveries that are due (the relay's sweep calls this).

    Due means: the backoff after a transient fault has passed, or a message or attempt was lost
    (its lease ran out). Rows locked by another relay are skipped (PostgreSQL SKIP LOCKED).
    """
    now = now or utcnow()
    due = session.scalars(
        select(Delivery)
        .where(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at)
        .limit(REQUEUE_BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    for delivery in due:
        _hand_out(session, delivery, now, handout_lease)
    return [d.id for d in due]


def resend_study(
    session: Session,
    study_uid: str,
    *,
    handout_lease: dt.timedelta,
    include_sent: bool = False,
    now: dt.datetime | None = None,
) -> list[Delivery]:
    """Replay: every result object of the study to every current destination.

    New destinations get new deliveries; failed and pending ones are handed out again (their try
    count starts over, their attempt history stays); sent ones only with *include_sent* (e.g. the
    PACS lost them). Returns the deliveries handed out.
    """
    now = now or utcnow()
    study = session.scalars(select(Study).where(Study.study_uid == study_uid.strip())).one_or_none()
    if study is None:
        raise UnknownStudyError(study_uid.strip())
    results = session.scalars(
        select(ResultObject).where(ResultObject.study_id == study.id).order_by(ResultObject.id)
    ).all()
    destinations = result_destinations(session)
    handed: list[Delivery] = []
    for result in results:
        for destination in destinations:
            delivery = session.scalars(
                select(Delivery)
                .where(Delivery.result_object_id == result.id, Delivery.remote_ae_id == destination.id)
                .with_for_update()
            ).one_or_none()
            if delivery is None:
                delivery = _new_delivery(session, result, destination, now)
            elif delivery.status == DeliveryStatus.SENT and not include_sent:
                continue
            else:
                delivery.status = DeliveryStatus.PENDING
                delivery.attempts = 0
                delivery.sent_at = None
            _hand_out(session, delivery, now, handout_lease)
            handed.append(delivery)
    return handed


def reads_without_objects(session: Session, study_uid: str) -> list[int]:
    """Reads of the study that have no result object (their build failed or was never asked)."""
    query = (
        select(AIRead.id)
        .join(Study, Study.id == AIRead.study_id)
        .where(Study.study_uid == study_uid.strip())
        .where(~select(ResultObject.id).where(ResultObject.read_id == AIRead.id).exists())
        .order_by(AIRead.id)
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class Replay:
    deliveries: list[int]
    rebuilt_reads: list[int]


def replay_study(
    session: Session, settings: Settings, study_uid: str, *, include_sent: bool = False
) -> Replay:
    """``clinic dicom resend``: :func:`resend_study`, and (when results are sent at all) build
    again the objects of reads that have none, e.g. after a build that failed."""
    handed = resend_study(
        session, study_uid, handout_lease=handout_lease(settings), include_sent=include_sent
    )
    rebuilt = reads_without_objects(session, study_uid) if settings.results_send else []
    for read_id in rebuilt:
        request_results(session, read_id)
    session.flush()
    return Replay([d.id for d in handed], rebuilt)


# --- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptView:
    at: dt.datetime
    outcome: str
    status_code: int | None
    error: str
    duration_ms: float | None


@dataclass(frozen=True)
class DeliveryView:
    id: int
    status: str
    attempts: int
    last_error: str
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    sent_at: dt.datetime | None
    destination: str
    kind: str
    sop_instance_uid: str
    study_uid: str
    attempt_log: tuple[AttemptView, ...]


def list_deliveries(
    session: Session,
    *,
    status: DeliveryStatus | str | None = None,
    study_uid: str | None = None,
    limit: int = 200,
) -> list[DeliveryView]:
    """Deliveries, newest first, with every attempt (identifiers only: no patient data)."""
    query = (
        select(Delivery, RemoteAE.ae_title, ResultObject, Study.study_uid)
        .join(RemoteAE, RemoteAE.id == Delivery.remote_ae_id)
        .join(ResultObject, ResultObject.id == Delivery.result_object_id)
        .join(Study, Study.id == ResultObject.study_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(Delivery.status == DeliveryStatus(status))
    if study_uid:
        query = query.where(Study.study_uid == study_uid.strip())
    views = []
    for delivery, title, result, uid in session.execute(query).all():
        views.append(
            DeliveryView(
                id=delivery.id,
                status=str(delivery.status),
                attempts=delivery.attempts,
                last_error=delivery.last_error,
                created_at=delivery.created_at,
                next_attempt_at=delivery.next_attempt_at,
                sent_at=delivery.sent_at,
                destination=title,
                kind=str(result.kind),
                sop_instance_uid=result.sop_instance_uid,
                study_uid=uid,
                attempt_log=tuple(
                    AttemptView(a.at, a.outcome, a.status_code, a.error, a.duration_ms)
                    for a in delivery.attempt_log
                ),
            )
        )
    return views


@dataclass(frozen=True)
class BuildFailureView:
    """A read whose result objects could not be built (identifiers only: no patient data)."""

    read_id: int
    study_uid: str
    model_id: str
    model_name: str
    model_version: str
    failed_at: dt.datetime | None
    reason: str
    #: Result objects the read has anyway (from an earlier build; a failed revision keeps them).
    objects: int


def list_build_failures(
    session: Session, *, study_uid: str | None = None, limit: int = 200
) -> list[BuildFailureView]:
    """Reads whose last build of result objects failed for good, the latest failure first.
    ``clinic dicom resend STUDY_UID`` builds again the objects of those that have none."""
    objects = select(func.count(ResultObject.id)).where(ResultObject.read_id == AIRead.id).scalar_subquery()
    query = (
        select(AIRead, Study.study_uid, objects)
        .join(Study, Study.id == AIRead.study_id)
        .where(AIRead.results_error != "")
        .order_by(AIRead.results_failed_at.desc(), AIRead.id.desc())
        .limit(limit)
    )
    if study_uid:
        query = query.where(Study.study_uid == study_uid.strip())
    return [
        BuildFailureView(
            read_id=read.id,
            study_uid=uid,
            model_id=read.model_id,
            model_name=read.model_name,
            model_version=read.model_version,
            failed_at=read.results_failed_at,
            reason=read.results_error,
            objects=int(n or 0),
        )
        for read, uid, n in session.execute(query).all()
    ]
