"""Query/Retrieve service class user (PS3.4 Annex C) on pynetdicom: the priors of a study.

Three operations, all at the STUDY level of the Study Root information model (PS3.4 C.6.2):

* :func:`find_studies`: C-FIND (C.4.1) for one patient's studies, by Patient ID (0010,0020),
  Issuer of Patient ID (0010,0021) when known and Modalities in Study (0008,0061), returning the
  Study Instance UID, Study Date, Study Description, Modalities in Study and Accession Number.
* :func:`move_study`: C-MOVE (C.4.2) of one study to a Move Destination AE title, our own SCP:
  the PACS opens a second association to it and C-STOREs each instance there, where the C-STORE
  SCP stores and indexes it like any other (store, then acknowledge).
* :func:`get_study`: C-GET (C.4.3) of one study: the PACS sends the instances as C-STORE
  sub-operations on the same association, so we propose the storage SOP classes with SCP/SCU Role
  Selection (PS3.7 D.3.3.4) and store each through the same durable path as the SCP
  (:func:`integrations.dicom.scp.store_instance`: the file fsynced, then its row committed,
  before the sub-operation is answered Success).

Outcomes are values: a retrieve returns a :class:`RetrieveOutcome` (final status and the numbers
of completed, failed and warning sub-operations); faults raise :class:`PeerUnavailableError` when
they may pass (no association: connection refused, timeout, abort, a transient rejection) and
:class:`PeerRefusedError` when the PACS said no (a permanent rejection, a C-FIND failure status).
Logs carry UIDs and AE titles, never patient identifiers or names.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from clinic.db import unit_of_work
from clinic.imaging.service import record_failure
from integrations.dicom.errors import DatasetEncodingError
from integrations.dicom.scp import STORAGE_SOP_CLASSES, StoreContext, safe_reason, store_instance
from integrations.dicom.status import StatusCategory, StoreStatus, category, store_status_for

LOGGER = logging.getLogger(__name__)

#: ``receive_failures.channel`` of instances refused during a C-GET.
GET_CHANNEL = "dicom-cget"

#: Characters that make a C-FIND key a wildcard (PS3.4 C.2.2.2.4) or a list (``\``): a patient
#: ID holding one would match other patients, so it is never sent as a matching key.
_WILDCARDS = frozenset("*?\\")

#: Transfer syntaxes offered for C-GET storage sub-operations. Per SOP class one context with the
#: uncompressed syntaxes (every PACS can send those, decompressing if it must) and one context per
#: common compressed syntax, so that a compressed instance comes as it is stored: 14 SOP classes x
#: 7 contexts + the C-GET context = 99, within the 128 of PS3.8 §9.3.2.2.
_GET_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: PS3.8 §9.3.2.2: at most 128 presentation contexts in one association request.
_MAX_CONTEXTS = 128
_GET_COMPRESSED = (JPEG2000Lossless, JPEG2000, JPEGLosslessSV1, JPEGLSLossless, JPEGBaseline8Bit, RLELossless)


class QueryStatus(IntEnum):
    """C-FIND response statuses (PS3.4 C.4.1.1.4, Table C.4-1)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    #: Pending: one or more Optional Keys were not supported.
    PENDING_WARNING = 0xFF01
    CANCEL = 0xFE00
    #: Refused: Out of Resources.
    OUT_OF_RESOURCES = 0xA700
    #: Failed: Identifier does not match SOP Class.
    IDENTIFIER_DOES_NOT_MATCH = 0xA900
    #: Failed: Unable to process (0xC000-0xCFFF).
    UNABLE_TO_PROCESS = 0xC000
    SOP_CLASS_NOT_SUPPORTED = 0x0122


class RetrieveStatus(IntEnum):
    """C-MOVE and C-GET response statuses (PS3.4 C.4.2.1.5 Table C.4-2, C.4.3.1.4 Table C.4-3)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    #: Warning: Sub-operations Complete - One or more Failures or Warnings.
    SUB_OPERATIONS_WARNING = 0xB000
    #: Refused: Out of Resources - Unable to calculate number of matches.
    OUT_OF_RESOURCES_MATCHES = 0xA701
    #: Refused: Out of Resources - Unable to perform sub-operations.
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    #: Refused: Move Destination unknown (C-MOVE only): the PACS does not know our AE title.
    MOVE_DESTINATION_UNKNOWN = 0xA801
    #: Failed: Identifier does not match SOP Class.
    IDENTIFIER_DOES_NOT_MATCH = 0xA900
    #: Failed: Unable to process (0xC000-0xCFFF).
    UNABLE_TO_PROCESS = 0xC000
    SOP_CLASS_NOT_SUPPORTED = 0x0122


def status_text(code: int | None, table: type[IntEnum] = RetrieveStatus) -> str:
    """``0xA801 MOVE_DESTINATION_UNKNOWN`` for a status code; the range name for 0xCxxx."""
    if code is None:
        return "no final response"
    if 0xC000 <= code <= 0xCFFF:
        return f"0x{code:04X} UNABLE_TO_PROCESS"
    try:
        return f"0x{code:04X} {table(code).name}"
    except ValueError:
        return f"0x{code:04X} {category(code).value.upper()}"


class QRError(Exception):
    """A query or retrieve did not happen as asked; ``reason`` holds no PHI."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerUnavailableError(QRError):
    """No association or it broke: connection refused, timed out, aborted, rejected (transient).
    Worth a retry later."""


class PeerRefusedError(QRError):
    """The PACS said no: a permanent rejection or a failure status. A retry would meet it again."""


class InvalidQueryError(QRError, ValueError):
    """The query cannot be sent as asked (an empty patient ID, or one holding wildcards)."""


@dataclass(frozen=True)
class Peer:
    """A PACS by AE title and address (PS3.8 §7.1)."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class StudyMatch:
    """One STUDY-level C-FIND match (PS3.4 C.6.2.1.2)."""

    study_uid: str
    patient_id: str
    study_date: dt.date | None
    description: str
    modalities: tuple[str, ...]
    accession_number: str


@dataclass(frozen=True)
class RetrieveOutcome:
    """The end of a C-MOVE or C-GET: its final status and sub-operation counts (PS3.4 C.4.2.3)."""

    method: str
    #: Final status; ``None`` when the association ended before a final response.
    status: int | None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error_comment: str = ""

    @property
    def succeeded(self) -> bool:
        """Success, or Warning with at least one completed sub-operation."""
        if self.status is None:
            return False
        kind = category(self.status)
        return kind is StatusCategory.SUCCESS or (kind is StatusCategory.WARNING and self.completed > 0)

    @property
    def transient(self) -> bool:
        """A failure that may pass: the association broke, or the PACS was out of resources."""
        return self.status is None or self.status in (
            RetrieveStatus.OUT_OF_RESOURCES_MATCHES,
            RetrieveStatus.OUT_OF_RESOURCES_SUB_OPERATIONS,
        )

    def describe(self) -> str:
        """``C-MOVE 0x0000 SUCCESS: 2 completed, 0 failed, 0 warning`` (and the Error Comment)."""
        text = (
            f"C-{self.method.upper()} {status_text(self.status)}: {self.completed} completed, "
            f"{self.failed} failed, {self.warning} warning"
        )
        return f"{text} ({self.error_comment})" if self.error_comment else text


# --- associations -----------------------------------------------------------------------------------


def _make_ae(calling_ae: str, dimse_timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = 1024 * 1024
    # Seconds: an unreachable or silent PACS must not hold a worker for long; a retrieve waits
    # up to dimse_timeout between two responses (a PACS answers Pending after each sub-operation).
    ae.acse_timeout = 30
    ae.network_timeout = 60
    ae.dimse_timeout = dimse_timeout
    ae.connection_timeout = 10
    return ae


def _associate(
    ae: AE,
    peer: Peer,
    contexts: Sequence[PresentationContext],
    ext_neg: Sequence[Any] | None = None,
    handlers: Sequence[Any] | None = None,
) -> Association:
    """An established association whose first context (the Q/R information model) was accepted."""
    ae.requested_contexts = list(contexts)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        ext_neg=list(ext_neg) if ext_neg else None,
        evt_handlers=list(handlers) if handlers else None,
    )
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    if assoc.is_established:
        model = contexts[0].abstract_syntax
        if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
            assoc.release()
            raise PeerRefusedError(f"{where} does not accept {getattr(model, 'name', model)}")
        return assoc
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result", None)
        detail = f"{getattr(primitive, 'result_str', '')}: {getattr(primitive, 'reason_str', '')}".strip(": ")
        if result == 0x01:  # rejected permanent (PS3.8 §9.3.4): e.g. our AE title is not known there
            raise PeerRefusedError(f"association rejected by {where} ({detail})")
        raise PeerUnavailableError(f"association rejected by {where} ({detail})")
    # pynetdicom reports a refused connection as an abort, like a peer that accepted no context.
    raise PeerUnavailableError(f"no association with {where}: connection refused, timed out or aborted")


def _release(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


# --- C-FIND -----------------------------------------------------------------------------------------


def _date(value: object) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _modalities(value: object) -> tuple[str, ...]:
    """Modalities in Study (CS, VM 1-n): pydicom gives a str for one value, a MultiValue for more."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(cast(Sequence[object], value))
    return tuple(str(v).strip().upper() for v in items if str(v).strip())


def _match(identifier: Dataset) -> StudyMatch | None:
    study_uid = str(identifier.get("StudyInstanceUID", "") or "").strip()
    if not study_uid:
        return None
    return StudyMatch(
        study_uid=study_uid,
        patient_id=str(identifier.get("PatientID", "") or ""),
        study_date=_date(identifier.get("StudyDate", "")),
        description=str(identifier.get("StudyDescription", "") or ""),
        modalities=_modalities(identifier.get("ModalitiesInStudy", "")),
        accession_number=str(identifier.get("AccessionNumber", "") or ""),
    )


def study_query(patient_id: str, issuer: str = "", modality: str = "") -> Dataset:
    """The STUDY-level C-FIND identifier (PS3.4 C.6.2.1): matching keys and the keys returned."""
    if not patient_id.strip():
        raise InvalidQueryError("no patient ID to query by")
    if _WILDCARDS & set(patient_id + issuer + modality):
        raise InvalidQueryError("a matching key holds a wildcard or backslash; not queried")
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.ModalitiesInStudy = modality
    ds.StudyInstanceUID = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyDescription = ""
    ds.AccessionNumber = ""
    return ds


def find_studies(
    peer: Peer,
    *,
    patient_id: str,
    issuer: str = "",
    modality: str = "",
    calling_ae: str = "CLINIC",
    timeout: float = 60.0,
) -> list[StudyMatch]:
    """The patient's studies on *peer* (of *modality* when given), in the order the PACS sent them.

    Only matches whose Patient ID equals *patient_id* are kept: a PACS that matched more loosely
    (case, padding) must not hand us another patient's study.
    """
    identifier = study_query(patient_id, issuer, modality)
    ae = _make_ae(calling_ae, timeout)
    assoc = _associate(ae, peer, [build_context(StudyRootQueryRetrieveInformationModelFind)])
    matches: list[StudyMatch] = []
    try:
        responses = assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        final: int | None = None
        for status, found in responses:
            if "Status" not in status:
                raise PeerUnavailableError(f"C-FIND on {peer.ae_title}: no response (timeout or abort)")
            code = int(status.Status)
            if code in (QueryStatus.PENDING, QueryStatus.PENDING_WARNING):
                match = _match(found) if found is not None else None
                if match is not None and match.patient_id.strip() == patient_id.strip():
                    matches.append(match)
                continue
            final = code
        if final is None:
            raise PeerUnavailableError(f"C-FIND on {peer.ae_title}: no final response")
        if final != QueryStatus.SUCCESS:
            if final == QueryStatus.OUT_OF_RESOURCES:
                raise PeerUnavailableError(f"C-FIND on {peer.ae_title}: {status_text(final, QueryStatus)}")
            raise PeerRefusedError(f"C-FIND on {peer.ae_title}: {status_text(final, QueryStatus)}")
    finally:
        _release(assoc)
    LOGGER.info("C-FIND on %s: %d matching stud(ies)", peer.ae_title, len(matches))
    return matches


# --- C-MOVE and C-GET ---------------------------------------------------------------------------------


def _retrieve_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def _count(status: Dataset, keyword: str) -> int:
    try:
        return int(status.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return 0


def _outcome(method: str, responses: Iterator[tuple[Dataset, Dataset | None]]) -> RetrieveOutcome:
    """Read the responses to their end; the last status (and its counts) is the outcome."""
    last: Dataset | None = None
    final: int | None = None
    for status, _identifier in responses:
        if "Status" not in status:
            break  # timeout, abort or an invalid response: no final status
        last = status
        code = int(status.Status)
        if category(code) is not StatusCategory.PENDING:
            final = code
    if last is None:
        return RetrieveOutcome(method, None)
    return RetrieveOutcome(
        method,
        final,
        completed=_count(last, "NumberOfCompletedSuboperations"),
        failed=_count(last, "NumberOfFailedSuboperations"),
        warning=_count(last, "NumberOfWarningSuboperations"),
        error_comment=str(last.get("ErrorComment", "") or "")[:200],
    )


def move_study(
    peer: Peer,
    study_uid: str,
    *,
    destination_ae: str,
    calling_ae: str = "CLINIC",
    timeout: float = 300.0,
) -> RetrieveOutcome:
    """C-MOVE one study from *peer* to *destination_ae* (our SCP, which the PACS must know).

    Returns when the PACS sent its final response: every sub-operation it counts as completed was
    answered Success by the destination, i.e. stored and committed there.
    """
    ae = _make_ae(calling_ae, timeout)
    assoc = _associate(ae, peer, [build_context(StudyRootQueryRetrieveInformationModelMove)])
    try:
        responses = assoc.send_c_move(
            _retrieve_identifier(study_uid), destination_ae, StudyRootQueryRetrieveInformationModelMove
        )
        outcome = _outcome("move", responses)
    finally:
        _release(assoc)
    LOGGER.info("study %s from %s: %s", study_uid, peer.ae_title, outcome.describe())
    return outcome


def get_contexts() -> tuple[list[PresentationContext], list[Any]]:
    """Requested contexts and SCP/SCU role selection items of a C-GET association.

    Every storage SOP class gets its uncompressed context; the compressed ones follow, in
    :data:`STORAGE_SOP_CLASSES` order, while they fit in 128 (should that list grow).
    """
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    contexts.extend(build_context(sop_class, list(_GET_UNCOMPRESSED)) for sop_class in STORAGE_SOP_CLASSES)
    for sop_class in STORAGE_SOP_CLASSES:
        if len(contexts) + len(_GET_COMPRESSED) > _MAX_CONTEXTS:
            break
        contexts.extend(build_context(sop_class, [syntax]) for syntax in _GET_COMPRESSED)
    roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_SOP_CLASSES]
    return contexts, roles


def _refusal(status: StoreStatus, reason: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = reason.encode("ascii", "replace").decode()[:64]  # LO: 64 characters
    return rsp


def handle_get_store(event: Event, ctx: StoreContext, source_ae: str) -> int | Dataset:
    """EVT_C_STORE of a C-GET sub-operation: store, then acknowledge (as the SCP does)."""
    request = cast(C_STORE, event.request)
    sop_class = str(request.AffectedSOPClassUID or "")
    sop_instance = str(request.AffectedSOPInstanceUID or "")
    try:
        if request.DataSet is None:
            raise DatasetEncodingError("no data set in the C-STORE request")
        with request.DataSet.getbuffer() as raw:
            store_instance(
                ctx,
                raw,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax=str(event.context.transfer_syntax),
                calling_ae=source_ae,
            )
    except Exception as exc:
        status, reason = store_status_for(exc), safe_reason(exc)
        ctx.count(success=False)
        LOGGER.warning(
            "C-GET sub-operation sop_instance=%s from %s refused: %s", sop_instance, source_ae, reason
        )
        try:
            with unit_of_work(ctx.session_factory) as session:
                record_failure(
                    session,
                    channel=GET_CHANNEL,
                    status_code=int(status),
                    reason=reason,
                    calling_ae=source_ae[:16],
                    sop_class_uid=sop_class[:64],
                    sop_instance_uid=sop_instance[:64],
                )
        except Exception as record_exc:  # the database may be what failed; answer anyway
            LOGGER.error("could not record the refusal of %s: %s", sop_instance, safe_reason(record_exc))
        return _refusal(status, reason)
    ctx.count(success=True)
    return int(StoreStatus.SUCCESS)


def get_study(
    peer: Peer,
    study_uid: str,
    ctx: StoreContext,
    *,
    calling_ae: str = "CLINIC",
    timeout: float = 300.0,
) -> RetrieveOutcome:
    """C-GET one study from *peer*; its instances are stored through *ctx* as they arrive."""
    ae = _make_ae(calling_ae, timeout)
    contexts, roles = get_contexts()
    handlers = [(evt.EVT_C_STORE, handle_get_store, [ctx, peer.ae_title])]
    assoc = _associate(ae, peer, contexts, ext_neg=roles, handlers=handlers)
    try:
        responses = assoc.send_c_get(
            _retrieve_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet
        )
        outcome = _outcome("get", responses)
    finally:
        _release(assoc)
    LOGGER.info("study %s from %s: %s", study_uid, peer.ae_title, outcome.describe())
    return outcome
