"""Tasks: thin, id in, database and models out (STYLE.md, background work).

``clinic.analyse_study(job_id)`` claims the analysis job (a lease, committed at once so that the
relay can hand the job out again if this worker dies), reads the study with every model the registry
selects, and writes all reads and the job's end state in ONE unit of work. Inference runs outside
any transaction: no database lock (on SQLite, the single write lock) is held while a model runs.

Failure policy (DESIGN.md §4 rule 3):

* transient (database unreachable or locked, broker/network errors, disk full while writing a
  heatmap): retry with exponential backoff, 1 s doubling to 5 min, up to :data:`MAX_RETRIES` times.
  A retry that finds the job still leased to the failed attempt does nothing; the lease running out
  hands the job out again (``requeue_expired`` in the relay).
* permanent (no instance, an image that cannot be loaded, a bundle that cannot be loaded, a model
  that raises): ``fail_job`` with the reason, no retry; the job is listed as failed and replayable.
  Reads that other models produced before the failure are kept (a replay skips them).
* no model applies to the study (e.g. a CT study while only chest-radiograph models are
  installed): the job is DONE with no read. That is not a fault, the worklist treats the study as
  unread, and the worker log says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from celery import Celery, Task
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.service import (
    ANALYSE_STUDY_TASK,
    FindingIn,
    MeasurementIn,
    ReadIn,
    claim_job,
    fail_job,
    finish_job,
    reads_for_study,
    record_read,
)
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.imaging.models import Study
from clinic.imaging.service import study_instances
from clinic.orders.service import order_reason
from clinic.results.service import request_results
from clinic.settings import Settings

if TYPE_CHECKING:
    from inference.registry import AnyModel, LoadedModel, ModelRegistry
    from inference.types import Finding, ModelResult

log = logging.getLogger(__name__)

#: Retries of a transient fault: 1, 2, 4, ... 300 s (capped); 30 of them span about two hours.
MAX_RETRIES = 30
RETRY_BACKOFF_CAP_S = 300.0

#: Frontal views of a chest radiograph, best first (PS3.16 CID 4010 / DICOM ViewPosition).
FRONTAL_VIEWS = ("PA", "AP")
RADIOGRAPHY = frozenset({"CR", "DX"})

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PermanentError(Exception):
    """A fault that retrying cannot cure; the job fails with this reason."""


#: File-system faults that the same retry would meet again.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """Faults worth a retry: the database or the network is away, the disk is full, for a while."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def retry_countdown(retries: int) -> float:
    return float(min(RETRY_BACKOFF_CAP_S, 2.0**retries))


# --- the per-process context ---------------------------------------------------------------------


class WorkerContext:
    """What a worker process builds once: the database engine and the model registry.

    ``import monai`` alone costs ~2.5 s (DESIGN.md §10), so the registry is loaded on the first
    task of a process (or at pool-process start with prefork) and kept; never per task. A registry
    that fails to load is not kept: the next task tries again (an admin may fix the bundle).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._db_lock = threading.Lock()
        self._models_lock = threading.Lock()
        self._session_factory: sessionmaker[Session] | None = None
        self._registry: ModelRegistry | None = None

    @property
    def session_factory(self) -> sessionmaker[Session]:
        with self._db_lock:
            if self._session_factory is None:
                engine = make_engine(self.settings.resolved_database_url)
                self._session_factory = make_session_factory(engine)
            return self._session_factory

    def registry(self) -> ModelRegistry:
        with self._models_lock:
            if self._registry is None:
                from inference.registry import ModelRegistry

                device = self.settings.inference_device
                self._registry = ModelRegistry.from_directory(
                    self.settings.resolved_models_dir, device=device
                )
                log.info(
                    "model registry loaded: %s",
                    ", ".join(f"{m.model_id} {m.version}" for m in self._registry.models) or "no models",
                )
            return self._registry


_contexts: dict[tuple[int, int], WorkerContext] = {}
_contexts_lock = threading.Lock()


def process_context(settings: Settings) -> WorkerContext:
    """This process's context for *settings* (a forked child builds its own)."""
    key = (os.getpid(), id(settings))
    with _contexts_lock:
        context = _contexts.get(key)
        if context is None:
            context = _contexts[key] = WorkerContext(settings)
        return context


# --- planning: which model reads which instance -------------------------------------------------


@dataclass(frozen=True)
class InputRef:
    """A candidate input instance, as plain values (read inside the claim's transaction)."""

    modality: str
    body_part: str
    view_position: str
    sop_instance_uid: str
    file_path: str
    series_uid: str = ""
    #: The imaging order's reason for exam, ``code|text`` (lower case), "" without an order.
    reason: str = ""

    def rank(self) -> int:
        """Lower is better: the frontal view of a chest radiograph first (PA, then AP)."""
        if self.modality.upper() in RADIOGRAPHY and self.view_position.upper() in FRONTAL_VIEWS:
            return FRONTAL_VIEWS.index(self.view_position.upper())
        return len(FRONTAL_VIEWS)


def plan_reads(registry: ModelRegistry, inputs: Sequence[InputRef]) -> list[tuple[LoadedModel, InputRef]]:
    """Each 2D model the registry selects for any series of the study, with its best input instance.

    Volumetric (3D) models read whole series: :func:`worker.volumes.plan_series_reads` plans them.
    """
    selected: dict[tuple[str, str, str], list[LoadedModel]] = {}
    best: dict[tuple[str, str], tuple[LoadedModel, InputRef]] = {}
    for ref in inputs:  # already in series/instance order: the first of equal rank wins
        key = (ref.modality, ref.body_part, ref.view_position)
        if key not in selected:
            found: list[AnyModel] = registry.select(
                ref.modality, body_part=ref.body_part, view_position=ref.view_position, reason=ref.reason
            )
            selected[key] = [cast("LoadedModel", m) for m in found if not m.is_volumetric]
        for model in selected[key]:
            model_key = (model.model_id, model.version)
            if model_key not in best or ref.rank() < best[model_key][1].rank():
                best[model_key] = (model, ref)
    return list(best.values())


# --- results ---------------------------------------------------------------------------------


def safe_name(value: str) -> str:
    return _SAFE.sub("_", value).strip("._") or "_"


def save_heatmap(settings: Settings, study_uid: str, result: ModelResult, finding: Finding) -> str:
    """Write *finding*'s heatmap as an 8-bit grayscale PNG; its path relative to the data dir.

    Written to a temporary file and renamed, so a reader never sees half a PNG; the name is
    ``results/<study uid>/<model id>-<version>-<code>.png``, stable for a redelivered task.
    """
    import numpy as np
    from PIL import Image

    heatmap = np.asarray(finding.heatmap, dtype=np.float32)
    heatmap = np.squeeze(heatmap)
    if heatmap.ndim != 2:
        raise PermanentError(
            f"{result.model_id}: heatmap of {finding.code} has shape {heatmap.shape}, not HxW"
        )
    pixels = (np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    name = f"{safe_name(result.model_id)}-{safe_name(result.model_version)}-{safe_name(finding.code)}.png"
    return write_result_file(
        settings, study_uid, name, lambda handle: Image.fromarray(pixels, mode="L").save(handle, format="PNG")
    )


def write_result_file(
    settings: Settings, study_uid: str, name: str, write: Callable[[BinaryIO], object]
) -> str:
    """``results/<study uid>/<name>`` written by *write* to a temporary file, fsynced and renamed
    (a reader never sees half a file; a redelivered task writes the same name); its path relative
    to the data dir."""
    folder = settings.results_dir / safe_name(study_uid)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.relative_to(settings.resolved_data_dir).as_posix()


def save_mask(settings: Settings, study_uid: str, result: ModelResult) -> str:
    """Write a segmentation's mask as ``.npz``; its path relative to the data dir.

    ``results/<study uid>/<model id>-<version>-mask.npz`` holds ``mask`` (uint8, frames × rows ×
    columns, 1 = the finding) and ``sop_instance_uids`` (frame k is that instance), written with
    ``np.savez_compressed`` to a temporary file, fsynced and renamed: a reader never sees half a
    file and a redelivered task writes the same name.
    """
    import numpy as np

    if result.mask is None:
        raise PermanentError(f"{result.model_id}: no mask to save")
    mask = np.ascontiguousarray(result.mask, dtype=np.uint8)
    if mask.ndim != 3 or mask.shape[0] != len(result.mask_sop_uids):
        raise PermanentError(
            f"{result.model_id}: mask {mask.shape} does not match {len(result.mask_sop_uids)} instances"
        )
    name = f"{safe_name(result.model_id)}-{safe_name(result.model_version)}-mask.npz"
    uids = np.array(result.mask_sop_uids, dtype=str)
    return write_result_file(
        settings,
        study_uid,
        name,
        lambda handle: np.savez_compressed(handle, mask=mask, sop_instance_uids=uids),
    )


def to_read_in(settings: Settings, study_uid: str, result: ModelResult, ref: InputRef) -> ReadIn:
    """The domain's :class:`ReadIn` for an inference :class:`ModelResult` (heatmaps and mask saved)."""
    findings = tuple(
        FindingIn(
            code=f.code,
            label=f.label,
            probability=float(f.probability),
            threshold=float(f.threshold),
            urgency=int(f.urgency),
            heatmap_path=save_heatmap(settings, study_uid, result, f) if f.heatmap is not None else "",
        )
        for f in result.findings
    )
    return ReadIn(
        model_id=result.model_id,
        model_name=result.model_name,
        model_version=result.model_version,
        sop_instance_uid=result.sop_instance_uid or ref.sop_instance_uid,
        is_synthetic=bool(result.is_synthetic),
        disclaimer=result.disclaimer,
        device=result.device,
        inference_ms=float(result.inference_ms),
        findings=findings,
        series_uid=result.series_uid or ref.series_uid,
        mask_path=save_mask(settings, study_uid, result) if result.mask is not None else "",
        measurements=tuple(
            MeasurementIn(m.code, m.label, float(m.value), m.unit, m.finding_code)
            for m in result.measurements
        ),
    )


# --- the analysis --------------------------------------------------------------------------------


@dataclass
class _Claimed:
    study_id: int
    study_uid: str
    inputs: list[InputRef]
    done: set[tuple[str, str]]


def _claim(context: WorkerContext, job_id: int) -> _Claimed | None:
    """Take the job's lease and read what the analysis needs; committed at once."""
    lease = dt.timedelta(seconds=context.settings.job_lease_seconds)
    with unit_of_work(context.session_factory) as session:
        job = claim_job(session, job_id, lease)
        if job is None:
            return None
        study = session.get(Study, job.study_id)
        if study is None:  # a foreign key makes this impossible; say so if it happens
            fail_job(session, job_id, f"study {job.study_id} does not exist")
            return None
        reason = order_reason(session, study.id)  # the order's reason for exam routes models too
        inputs = [
            InputRef(
                modality=(series.modality or "").upper(),
                body_part=(series.body_part or "").upper(),
                view_position=(series.view_position or "").upper(),
                sop_instance_uid=instance.sop_instance_uid,
                file_path=instance.file_path,
                series_uid=series.series_uid,
                reason=reason,
            )
            for series, instance in study_instances(session, study.id)
        ]
        done = {(r.model_id, r.model_version) for r in reads_for_study(session, study.id)}
        return _Claimed(study.id, study.study_uid, inputs, done)


def _read_all(
    context: WorkerContext, job_id: int, claimed: _Claimed, plan: Iterable[tuple[LoadedModel, InputRef]]
) -> tuple[list[ReadIn], list[str]]:
    """Run every planned model; permanent per-model faults become reasons, transient ones raise."""
    from inference.dicom_io import load_image

    settings = context.settings
    reads: list[ReadIn] = []
    errors: list[str] = []
    images: dict[str, Any] = {}
    for model, ref in plan:
        if (model.model_id, model.version) in claimed.done:
            log.info(
                "job %s: %s %s already read study %s", job_id, model.model_id, model.version, claimed.study_id
            )
            continue
        with model_faults(job_id, model, errors, f"image {ref.sop_instance_uid}"):
            if ref.file_path not in images:
                images[ref.file_path] = load_image(settings.resolved_data_dir / ref.file_path)
            result = model.predict(images[ref.file_path], explain=True)
            reads.append(to_read_in(settings, claimed.study_uid, result, ref))
    return reads, errors


@contextlib.contextmanager
def model_faults(
    job_id: int, model: Any, errors: list[str], source: str, name_file: bool = False
) -> Iterator[None]:
    """One model's read: a permanent fault becomes a reason in *errors* (the job goes on with the
    other models and records it); a transient one raises, for the task's retry. *source* names
    the input in the reason of an image or series that cannot be read (with the failing file's
    name when *name_file*: one of a series' many)."""
    from inference.dicom_io import ImageLoadError

    label = f"{model.model_id} {model.version}"
    try:
        yield
    except ImageLoadError as exc:
        where = f"{source}: {Path(exc.path).name}" if name_file else source
        errors.append(f"{label}: {where}: {exc.reason}")
    except PermanentError as exc:
        errors.append(str(exc))
    except Exception as exc:
        if is_transient(exc):
            raise
        log.exception("job %s: model %s raised", job_id, label)
        errors.append(f"{label}: {type(exc).__name__}: {exc}")


def _analyse(context: WorkerContext, job_id: int, claimed: _Claimed) -> tuple[list[ReadIn], list[str]]:
    from inference.registry import BundleError

    if not claimed.inputs:
        return [], [f"study {claimed.study_id} has no instances"]
    from worker.volumes import plan_series_reads, read_series  # 3D reads; it imports this module

    try:
        registry = context.registry()
        plan = plan_reads(registry, claimed.inputs)
        series_plan = plan_series_reads(registry, claimed.inputs)
    except BundleError as exc:
        return [], [f"model bundle cannot be loaded: {exc}"]
    if not plan and not series_plan:
        kinds = sorted(
            {f"{i.modality}/{i.body_part or '-'}/{i.view_position or '-'}" for i in claimed.inputs}
        )
        log.info("job %s: no model applies to study %s (%s)", job_id, claimed.study_id, ", ".join(kinds))
    reads, errors = _read_all(context, job_id, claimed, plan)
    more, more_errors = read_series(context.settings, job_id, claimed.study_uid, claimed.done, series_plan)
    return reads + more, errors + more_errors


def analyse_study(context: WorkerContext, job_id: int) -> str:
    """Analyse the study of job *job_id*; returns what happened (``done``, ``failed``, ``skipped``)."""
    claimed = _claim(context, job_id)
    if claimed is None:
        log.info("job %s: done already or leased to another worker; nothing to do", job_id)
        return "skipped"
    try:
        reads, errors = _analyse(context, job_id, claimed)
    except Exception as exc:
        if is_transient(exc):
            raise
        # Anything else would fail again on every hand-out of the job: fail it, visibly.
        log.exception("job %s: analysis raised", job_id)
        reads, errors = [], [f"{type(exc).__name__}: {exc}"]
    from worker import fhir_tasks, hl7_tasks  # here: they import this module

    with unit_of_work(context.session_factory) as session:
        for read_in in reads:
            read = record_read(session, claimed.study_id, job_id, read_in)
            if context.settings.results_send:  # the read and the request for its SR commit together
                request_results(session, read.id)
            # HL7 ORU^R01 to the EMR (hl7_results_destination), committed with the read
            hl7_tasks.queue_ai_result(session, context.settings, read.id)
            # FHIR DiagnosticReport to an external server (fhir_push_url), committed with the read
            fhir_tasks.queue_ai_report(session, context.settings, read.id)
        if errors:
            fail_job(session, job_id, "; ".join(errors))
        else:
            finish_job(session, job_id)
    if errors:
        log.warning("job %s failed: %s", job_id, "; ".join(errors))
        return "failed"
    log.info("job %s: study %s read by %d model(s)", job_id, claimed.study_id, len(reads))
    return "done"


# --- registration --------------------------------------------------------------------------------


def register(app: Celery, settings: Settings) -> None:
    """Define the tasks on *app* (called by :func:`worker.app.create_celery`)."""

    @app.task(name=ANALYSE_STUDY_TASK, bind=True, max_retries=MAX_RETRIES, acks_late=True)
    def analyse_study_task(self: Task, job_id: int) -> str:
        try:
            return analyse_study(process_context(settings), int(job_id))
        except Exception as exc:
            if not is_transient(exc):
                raise
            countdown = retry_countdown(self.request.retries)
            log.warning(
                "job %s: transient fault (%s); retry in %.0f s", job_id, type(exc).__name__, countdown
            )
            raise self.retry(exc=exc, countdown=countdown) from exc
