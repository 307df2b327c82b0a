"""Tasks that build AI result objects and deliver them to the PACS (queue ``outbound``).

``clinic.build_results(read_id, revise=False)``: loads the read and the instances it was made from
(the read instance, or every instance of the read series for a 3D model), has
:func:`integrations.dicom.results.build_result_objects` build a TID 1500 SR (and a SEG when the read
has a mask), writes each object durably (:class:`integrations.dicom.storage.InstanceStore`) and
records them, their deliveries and the deliveries' outbox rows in one unit of work
(:func:`clinic.results.service.record_result_objects`). Idempotent: a read that already has objects
gets none again (unless *revise*, which builds a new version that references the current one). A
concurrent run of the same task loses at the commit and removes its files. A build that fails for
good (:class:`BuildError`, another permanent fault, or the last retry of a transient one) is
recorded on the read with its reason (:func:`clinic.results.service.record_build_failure`), for
``clinic dicom build-failures``, the admin API and the study page; a later successful build
clears it.

``clinic.deliver_result(delivery_id)``: C-STORE of one object to one AE
(:func:`integrations.dicom.scu.send_files`), one attempt row per try. The outcome decides:

* Success or Warning (PS3.4 B.2.3: stored) → ``sent``.
* A failure status, an association rejected *permanent*, no presentation context for the object's
  SOP class, our file unreadable → ``failed``, permanent, replayable (``clinic dicom resend``).
  Refused: Out of Resources (0xA7xx) is the exception: the SCP says "not now", so it is transient.
* The peer cannot be reached, rejected the association *transient*, stopped answering → stays
  ``pending`` with a backoff (``delivery_backoff_seconds`` doubling up to
  ``delivery_backoff_cap_seconds``); the relay's sweep hands it out again when due. No Celery
  retry with a countdown: a countdown lives in the broker, the sweep survives losing it.

Faults of our own database are transient for both tasks: retried with backoff like analyse_study.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery, Task
from pydicom import Dataset, dcmread
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.service import InstanceMeta
from clinic.patients.service import PatientDemographics
from clinic.results.models import ResultKind
from clinic.results.service import (
    BUILD_RESULTS_TASK,
    DELIVER_RESULT_TASK,
    AttemptOutcome,
    DeliveryClaim,
    NewResultObject,
    ReadSources,
    SourceMissingError,
    claim_delivery,
    finish_attempt,
    handout_lease,
    read_sources,
    record_build_failure,
    record_result_objects,
)
from clinic.settings import Settings
from integrations.dicom.scu import SendResult, send_files
from integrations.dicom.status import StatusCategory, category
from integrations.dicom.storage import InstanceStore, StoredFile
from worker.tasks import MAX_RETRIES, WorkerContext, is_transient, process_context, retry_countdown

log = logging.getLogger(__name__)

#: SOP Class UID → kind of result object.
KINDS = {
    "1.2.840.10008.5.1.4.1.1.88.34": ResultKind.SR,  # Comprehensive 3D SR (TID 1500)
    "1.2.840.10008.5.1.4.1.1.88.33": ResultKind.SR,  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.22": ResultKind.SR,  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.66.4": ResultKind.SEG,  # Segmentation
}


class BuildError(Exception):
    """The objects of a read cannot be built; retrying the same build cannot help."""


# --- building ------------------------------------------------------------------------------------


def _load_mask(settings: Settings, mask_path: str) -> tuple[Any, tuple[str, ...]]:
    """The read's label map: ``mask`` (frames, rows, cols) uint8 and the SOP instance UID of
    the source instance of each frame (``sop_instance_uids``)."""
    import numpy as np

    try:
        with np.load(settings.resolved_data_dir / mask_path, allow_pickle=False) as data:
            mask = np.asarray(data["mask"], dtype=np.uint8)
            uids = tuple(str(u) for u in data["sop_instance_uids"])
    except (OSError, KeyError, ValueError) as exc:
        raise BuildError(f"mask {mask_path} cannot be read: {type(exc).__name__}: {exc}") from exc
    if mask.ndim != 3 or mask.shape[0] != len(uids):
        raise BuildError(f"mask {mask_path}: shape {mask.shape} does not match {len(uids)} source UIDs")
    return mask, uids


def build_datasets(settings: Settings, sources: ReadSources, revise: bool) -> list[Dataset]:
    """Call the builder with the source data sets (and the mask and predecessors, if any)."""
    from integrations.dicom.results import DEFAULT_MANUFACTURER, build_result_objects

    data_dir = settings.resolved_data_dir
    try:
        datasets = [dcmread(data_dir / path) for path in sources.source_files]
        predecessors = [dcmread(data_dir / path) for _kind, _uid, path in sources.latest] if revise else []
    except FileNotFoundError as exc:
        missing = Path(str(exc.filename))
        if missing.is_relative_to(data_dir):
            missing = missing.relative_to(data_dir)
        raise BuildError(f"read {sources.read.id}: a source file is missing: {missing.as_posix()}") from exc
    kwargs: dict[str, Any] = {}
    if sources.read.mask_path:
        mask, mask_uids = _load_mask(settings, sources.read.mask_path)
        kwargs = {"mask": mask, "mask_sop_uids": mask_uids}
    try:
        return list(
            build_result_objects(
                sources.read,
                datasets,
                predecessors=predecessors,
                manufacturer=DEFAULT_MANUFACTURER,
                series_number=sources.next_series_number,
                instance_number=1,
                **kwargs,
            )
        )
    except (ValueError, TypeError, AttributeError) as exc:  # ResultObjectError, highdicom's checks
        message = redact(f"{type(exc).__name__}: {exc}", [*datasets, *predecessors])
        raise BuildError(f"read {sources.read.id}: {message}") from exc


def redact(message: str, datasets: Sequence[Dataset]) -> str:
    """*message* without the patient names of *datasets* (a builder may quote a value it refused);
    the reason of a failed build is shown to admins and kept on the read."""
    for ds in datasets:
        name = str(ds.get("PatientName", "") or "").strip()
        for form in {name, name.replace("^", " ").strip()}:
            if len(form) > 1:
                message = message.replace(form, "<patient name>")
    return message


def _meta(ds: Dataset, stored: StoredFile) -> InstanceMeta:
    return InstanceMeta(
        patient=PatientDemographics(
            identifier=str(ds.get("PatientID", ""))[:64],
            issuer=str(ds.get("IssuerOfPatientID", ""))[:64],
            name=str(ds.get("PatientName", ""))[:200],
        ),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        file_path=stored.relative_path,
        file_size=stored.size,
        modality=str(ds.get("Modality", ""))[:16],
        series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") is not None else None,
        series_description=str(ds.get("SeriesDescription", ""))[:200],
        instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
        accession_number=str(ds.get("AccessionNumber", ""))[:64],
        rows=int(ds.Rows) if "Rows" in ds else None,
        columns=int(ds.Columns) if "Columns" in ds else None,
    )


def _kind(ds: Dataset) -> ResultKind:
    kind = KINDS.get(str(ds.SOPClassUID))
    if kind is None:
        raise BuildError(f"the builder made an object of SOP class {ds.SOPClassUID}, not an SR or a SEG")
    return kind


def write_objects(
    store: InstanceStore, datasets: Sequence[Dataset], predecessors: dict[ResultKind, str]
) -> list[tuple[NewResultObject, StoredFile]]:
    """Write each object durably; on any failure remove what was written and raise.

    *predecessors*: the current object of each kind, which a revision replaces.
    """
    from integrations.dicom.results import encode

    written: list[tuple[NewResultObject, StoredFile]] = []
    try:
        for ds in datasets:
            kind = _kind(ds)
            stored = store.write(
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), (encode(ds),)
            )
            new = NewResultObject(kind, _meta(ds, stored), predecessors.get(kind, ""))
            written.append((new, stored))
    except BaseException:
        for _new, stored in written:
            store.discard(stored)
        raise
    return written


def _read_sources(factory: sessionmaker[Session], read_id: int) -> ReadSources | None:
    with unit_of_work(factory) as session:
        try:
            return read_sources(session, read_id)
        except SourceMissingError as exc:
            raise BuildError(str(exc)) from exc


def failure_reason(exc: BaseException) -> str:
    """What to record of a fault that is not a :class:`BuildError`: its type and first line. A
    database error's SQL and parameters (which may hold patient data) are left out."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        lines = str(exc.orig).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else type(exc.orig).__name__}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def record_failure(factory: sessionmaker[Session], read_id: int, reason: str) -> None:
    """Note the failure on the read, in its own unit of work; a fault doing so is logged only (the
    build's outcome stands, and the log says why)."""
    try:
        with unit_of_work(factory) as session:
            record_build_failure(session, read_id, reason)
    except Exception:
        log.exception("build_results: read %s: the failure could not be recorded", read_id)


def build_results(context: WorkerContext, read_id: int, revise: bool = False) -> str:
    """Build, store and record the read's result objects; ``built``, ``exists``, ``lost-race``,
    ``no-read`` or ``failed`` (a permanent fault: logged, and recorded on the read with its reason
    until a later build succeeds). A fault that is not a :class:`BuildError` is recorded too when
    it is permanent, and raised; a transient one is raised for a retry."""
    try:
        return _build_results(context, read_id, revise)
    except BuildError as exc:
        log.error("build_results: read %s: objects cannot be built: %s", read_id, exc)
        record_failure(context.session_factory, read_id, str(exc))
        return "failed"
    except Exception as exc:
        if not is_transient(exc):
            log.error("build_results: read %s: objects cannot be built: %s", read_id, failure_reason(exc))
            record_failure(context.session_factory, read_id, failure_reason(exc))
        raise


def _build_results(context: WorkerContext, read_id: int, revise: bool) -> str:
    settings = context.settings
    factory = context.session_factory
    sources = _read_sources(factory, read_id)
    if sources is None:
        log.warning("build_results: read %s does not exist", read_id)
        return "no-read"
    if sources.existing and not revise:
        log.info("build_results: read %s has its objects already", read_id)
        return "exists"
    store = InstanceStore.from_settings(settings)
    replaced = {kind: uid for kind, uid, _path in sources.latest} if revise else {}
    written = write_objects(store, build_datasets(settings, sources, revise), replaced)
    try:
        with unit_of_work(factory) as session:
            created = record_result_objects(
                session,
                read_id,
                [new for new, _stored in written],
                expected_existing=sources.existing,
                handout_lease=handout_lease(settings),
            )
    except BaseException:
        for _new, stored in written:
            store.discard(stored)
        raise
    if created is None:
        for _new, stored in written:
            store.discard(stored)
        log.info("build_results: read %s: another run recorded its objects first", read_id)
        return "lost-race"
    kinds = ", ".join(f"{o.kind} {o.sop_instance_uid}" for o in created)
    log.info("build_results: read %s of study %s: %s", read_id, sources.study_uid, kinds)
    return "built"


# --- delivering ----------------------------------------------------------------------------------


#: An SCU error that says the peer does not take this SOP class at all (no accepted context).
_NO_CONTEXT = "No presentation context"


def classify(result: SendResult) -> tuple[AttemptOutcome, str]:
    """The outcome of one C-STORE as :func:`send_files` reports it, and the error to record."""
    if result.ok:
        return AttemptOutcome.SUCCESS, result.error
    if result.status is not None:
        code = f"0x{result.status:04X}"
        error = f"C-STORE answered {code}" + (f": {result.error}" if result.error else "")
        if category(result.status) is StatusCategory.FAILURE and (result.status & 0xFF00) == 0xA700:
            return AttemptOutcome.TRANSIENT, error  # Refused: Out of Resources, i.e. "not now"
        return AttemptOutcome.PERMANENT, error
    if result.rejection_result == 1:
        return AttemptOutcome.PERMANENT, result.error
    if result.error.startswith((_NO_CONTEXT, "not a DICOM file", "cannot read")):
        return AttemptOutcome.PERMANENT, result.error
    # not reachable, rejected transient, timed out, aborted: try again later
    return AttemptOutcome.TRANSIENT, result.error or "no response"


def _send(settings: Settings, claim: DeliveryClaim) -> tuple[AttemptOutcome, int | None, str]:
    path = settings.resolved_data_dir / claim.file_path
    if not Path(path).is_file():
        return AttemptOutcome.PERMANENT, None, f"object file {claim.file_path} is missing"
    try:
        results = send_files(claim.host, claim.port, claim.ae_title, [path], calling_ae=settings.dicom_ae)
    except (OSError, RuntimeError) as exc:  # socket errors that pynetdicom lets through
        return AttemptOutcome.TRANSIENT, None, f"{type(exc).__name__}: {exc}"
    outcome, error = classify(results[0])
    return outcome, results[0].status, error


def deliver_result(context: WorkerContext, delivery_id: int) -> str:
    """One attempt to deliver one object; returns the outcome (or ``skipped``)."""
    settings = context.settings
    with unit_of_work(context.session_factory) as session:
        claim = claim_delivery(session, delivery_id)
    if claim is None:
        log.info("delivery %s: sent, failed, gone or being attempted; nothing to do", delivery_id)
        return "skipped"
    started = time.perf_counter()
    outcome, status, error = _send(settings, claim)
    duration_ms = (time.perf_counter() - started) * 1000.0
    with unit_of_work(context.session_factory) as session:
        delivery = finish_attempt(
            session,
            claim.attempt_id,
            outcome,
            status_code=status,
            error=error,
            duration_ms=duration_ms,
            backoff_s=settings.delivery_backoff_seconds,
            backoff_cap_s=settings.delivery_backoff_cap_seconds,
        )
        next_at = delivery.next_attempt_at if delivery is not None else None
    target = f"{claim.ae_title}@{claim.host}:{claim.port}"
    if outcome is AttemptOutcome.SUCCESS:
        log.info(
            "delivery %s: %s sent to %s in %.0f ms", delivery_id, claim.sop_instance_uid, target, duration_ms
        )
    elif outcome is AttemptOutcome.PERMANENT:
        log.error("delivery %s to %s failed for good: %s", delivery_id, target, error)
    else:
        log.warning("delivery %s to %s: %s; next try after %s", delivery_id, target, error, next_at)
    return str(outcome)


# --- registration --------------------------------------------------------------------------------


def _retry(task: Task, exc: Exception, what: str) -> Exception:
    countdown = retry_countdown(task.request.retries)
    log.warning("%s: transient fault (%s); retry in %.0f s", what, type(exc).__name__, countdown)
    retry: Exception = task.retry(exc=exc, countdown=countdown)
    return retry


def register(app: Celery, settings: Settings) -> None:
    """Define the result tasks on *app* (called by :func:`worker.app.create_celery`)."""

    @app.task(name=BUILD_RESULTS_TASK, bind=True, max_retries=MAX_RETRIES, acks_late=True)
    def build_results_task(self: Task, read_id: int, revise: bool = False) -> str:
        try:
            return build_results(process_context(settings), int(read_id), bool(revise))
        except Exception as exc:
            if not is_transient(exc):
                raise  # recorded on the read by build_results
            if self.request.retries >= (self.max_retries or 0):  # the last try: permanent now
                reason = f"gave up after {self.request.retries} retries: {failure_reason(exc)}"
                log.error("build_results: read %s: %s", read_id, reason)
                record_failure(process_context(settings).session_factory, int(read_id), reason)
            raise _retry(self, exc, f"build_results({read_id})") from exc

    @app.task(name=DELIVER_RESULT_TASK, bind=True, max_retries=MAX_RETRIES, acks_late=True)
    def deliver_result_task(self: Task, delivery_id: int) -> str:
        try:
            return deliver_result(process_context(settings), int(delivery_id))
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise _retry(self, exc, f"deliver_result({delivery_id})") from exc
