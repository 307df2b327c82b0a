"""``clinic.fetch_priors(study_id)`` on the ``ingest`` queue: a study's priors, from each prior PACS.

The relay writes the task's outbox row when a study (received as new work, not a prior) completes
(:func:`clinic.imaging.priors.request_priors`). The task:

1. reads what to look for (:func:`clinic.imaging.priors.prior_query`) in a short unit of work;
2. C-FINDs each source (Study Root, STUDY level) for the patient's studies of each of the study's
   modalities, outside any transaction;
3. keeps the older studies that share a modality, newest first, at most ``settings.priors_limit``
   (:func:`select_priors`), records them and pre-creates their ``is_prior`` Study rows, and commits
   (:func:`plan_priors`) BEFORE retrieving, so that the instances land in those rows;
4. retrieves each: C-MOVE to our own AE title (``settings.dicom_ae``, which the PACS must know:
   the instances come in through our C-STORE SCP) or C-GET (the instances come on the same
   association and are stored through the SCP's durable store path), then marks each prior
   fetched or failed with the reason: the final status and the sub-operation counts.

Failure policy (DESIGN.md §4 rule 3): a PACS that cannot be reached, aborts, or is out of
resources is transient: the task retries with exponential backoff (1 s doubling, capped at 5 min),
the affected rows stay ``pending`` with the reason, and on the last attempt they become ``failed``.
A PACS that says no (permanent rejection, failure status, unknown move destination) fails the
prior at once, visibly. The task is idempotent: fetched priors are skipped, the rows are unique per
(study, prior study UID), and a re-sent instance replaces its earlier copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from celery import Celery, Task
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.priors import (
    FETCH_PRIORS_TASK,
    Candidate,
    PlannedRetrieve,
    PriorQuery,
    PriorSource,
    clear_query_problem,
    instance_count,
    mark_failed,
    mark_fetched,
    mark_retrying,
    plan_priors,
    prior_query,
    report_query_problem,
    select_priors,
)
from clinic.settings import Settings
from integrations.dicom.qr import (
    Peer,
    PeerRefusedError,
    PeerUnavailableError,
    QRError,
    RetrieveOutcome,
    find_studies,
    get_study,
    move_study,
)
from integrations.dicom.scp import StoreContext
from integrations.dicom.storage import InstanceStore
from worker.app import INGEST
from worker.tasks import is_transient, process_context, retry_countdown

log = logging.getLogger(__name__)

#: Retries of a transient fault: 1, 2, 4, ... 300 s (capped); 16 of them span about 45 minutes,
#: long enough for a PACS restart, short enough that priors still help the read they were for.
PRIORS_MAX_RETRIES = 16


class PriorsRetryError(Exception):
    """Some source or retrieve met a transient fault; the task should run again later."""


@dataclass
class FetchReport:
    """What one run did, for the log and the tests (UIDs and AE titles only, no PHI)."""

    study_id: int
    fetched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    #: Why nothing was looked up, when nothing was (no such study, a prior, no source ...).
    skipped: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"study {self.study_id}: priors skipped ({self.skipped})"
        return (
            f"study {self.study_id}: {len(self.fetched)} prior(s) fetched, {len(self.failed)} failed, "
            f"{len(self.retrying)} to retry"
        )


def _peer(source: PriorSource) -> Peer:
    return Peer(source.ae_title, source.host, source.port)


def _query_sources(
    settings: Settings, query: PriorQuery, report: FetchReport
) -> tuple[list[Candidate], list[tuple[str, str, bool]]]:
    """C-FIND every source for every modality; the matches and the problems (source, why, transient)."""
    candidates: list[Candidate] = []
    problems: list[tuple[str, str, bool]] = []
    for source in query.sources:
        try:
            for modality in query.modalities:
                for match in find_studies(
                    _peer(source),
                    patient_id=query.patient_identifier,
                    issuer=query.patient_issuer,
                    modality=modality,
                    calling_ae=settings.dicom_ae,
                ):
                    candidates.append(
                        Candidate(
                            study_uid=match.study_uid,
                            study_date=match.study_date,
                            description=match.description,
                            modalities=match.modalities,
                            accession_number=match.accession_number,
                            source_ae=source.ae_title,
                        )
                    )
        except PeerUnavailableError as exc:
            problems.append((source.ae_title, exc.reason, True))
        except QRError as exc:
            problems.append((source.ae_title, exc.reason, False))
    for title, reason, transient in problems:
        log.warning("study %s: priors query of %s failed: %s", query.study_id, title, reason)
        if transient:
            report.retrying.append(f"{title}: {reason}")
    return candidates, problems


def _retrieve(
    settings: Settings, session_factory: sessionmaker[Session], source: PriorSource, uid: str
) -> RetrieveOutcome:
    peer = _peer(source)
    if source.retrieve_method == "get":
        context = StoreContext(store=InstanceStore.from_settings(settings), session_factory=session_factory)
        return get_study(peer, uid, context, calling_ae=settings.dicom_ae)
    return move_study(peer, uid, destination_ae=settings.dicom_ae, calling_ae=settings.dicom_ae)


def _fetch_one(
    settings: Settings,
    session_factory: sessionmaker[Session],
    source: PriorSource,
    planned: PlannedRetrieve,
    final_attempt: bool,
    report: FetchReport,
) -> None:
    """Retrieve one prior and record how it went, in a unit of work of its own."""
    transient = failure = note = described = ""
    try:
        outcome = _retrieve(settings, session_factory, source, planned.study_uid)
    except PeerUnavailableError as exc:
        transient = exc.reason
    except PeerRefusedError as exc:
        failure = exc.reason
    except Exception as exc:
        if is_transient(exc):
            raise
        # A peer's odd answer that the protocol library could not take: fail this prior, visibly,
        # rather than leave it pending for ever.
        log.exception("prior %s from %s: retrieve raised", planned.study_uid, source.ae_title)
        failure = f"retrieve raised {type(exc).__name__}: {exc}"[:500]
    else:
        described = outcome.describe()
        if outcome.succeeded:
            note = "" if outcome.failed == 0 and outcome.warning == 0 else described
        elif outcome.transient:
            transient = described
        else:
            failure = described
    with unit_of_work(session_factory) as session:
        if not (transient or failure) and instance_count(session, planned.study_uid) == 0:
            failure = f"{described}, but no instance of the study arrived here"
        if transient and not final_attempt:
            mark_retrying(session, planned.prior_id, transient)
            report.retrying.append(f"{planned.study_uid}: {transient}")
        elif transient or failure:
            mark_failed(session, planned.prior_id, failure or f"gave up after retries: {transient}")
            report.failed.append(planned.study_uid)
        else:
            mark_fetched(session, planned.prior_id, note)
            report.fetched.append(planned.study_uid)
    if transient or failure:
        log.warning("prior %s from %s: %s", planned.study_uid, source.ae_title, transient or failure)


def fetch_priors(
    settings: Settings, session_factory: sessionmaker[Session], study_id: int, *, final_attempt: bool = False
) -> FetchReport:
    """Find, record and retrieve the priors of *study_id* (see the module docstring).

    Raises :class:`PriorsRetryError` when a transient fault left work undone, unless
    *final_attempt*, when such work is marked failed instead.
    """
    report = FetchReport(study_id)
    with unit_of_work(session_factory) as session:
        query = prior_query(session, study_id, settings.priors_limit)
    if query is None:
        report.skipped = "no such study, or it is itself a prior"
    elif not query.sources:
        report.skipped = "no PACS is configured as a prior source"
    elif query.limit <= 0:
        report.skipped = "priors_limit is 0"
    elif not query.modalities:
        report.skipped = "the study has no modality to match"
    if query is None or report.skipped:
        log.info(report.summary())
        return report
    candidates, problems = _query_sources(settings, query, report)
    chosen = select_priors(query, candidates)
    with unit_of_work(session_factory) as session:
        planned = plan_priors(session, query, chosen)
        if problems:
            final = final_attempt or all(not transient for _t, _r, transient in problems)
            reasons = "; ".join(f"{title}: {reason}" for title, reason, _ in problems)
            report_query_problem(session, study_id, problems[0][0], reasons, final)
        else:
            clear_query_problem(session, study_id)
    sources = {s.ae_title: s for s in query.sources}
    for item in planned:
        _fetch_one(settings, session_factory, sources[item.source_ae], item, final_attempt, report)
    log.info(report.summary())
    if report.retrying and not final_attempt:
        raise PriorsRetryError("; ".join(report.retrying))
    return report


def register(app: Celery, settings: Settings) -> None:
    """Define ``clinic.fetch_priors`` on *app* (called by :func:`worker.app.create_celery`)."""

    @app.task(name=FETCH_PRIORS_TASK, bind=True, max_retries=PRIORS_MAX_RETRIES, acks_late=True, queue=INGEST)
    def fetch_priors_task(self: Task, study_id: int) -> str:
        retries = int(self.request.retries or 0)
        final = retries >= PRIORS_MAX_RETRIES
        try:
            return fetch_priors(
                settings, process_context(settings).session_factory, int(study_id), final_attempt=final
            ).summary()
        except Exception as exc:
            if not (isinstance(exc, PriorsRetryError) or is_transient(exc)) or final:
                raise
            countdown = retry_countdown(retries)
            log.warning("study %s: priors: transient fault (%s); retry in %.0f s", study_id, exc, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
