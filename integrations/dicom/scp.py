"""C-ECHO and C-STORE service class provider (PS3.4 Annex A and B) on pynetdicom.

Store, then acknowledge (DESIGN.md §4 rule 1): a C-STORE is answered Success only after its file
is durable (:mod:`integrations.dicom.storage`) and its row is committed in one unit of work
(``record_instance``). Anything else gets a failure status from the one table in
:mod:`integrations.dicom.status`, leaves no file and no instance row, and is recorded as a
``receive_failures`` row (rule 4). Handlers get their dependencies bound
(``(evt.EVT_C_STORE, handle_store, [ctx])``); the engine and session factory are made once, when
the server starts. Logs carry UIDs and AE titles, never patient names.

Speed (bench/cstore_ingest.py: 0.5 MB CT instances from dcmtk's storescu, one association): the
data set is never decoded; it is written as received and only the indexed header attributes are
read (:mod:`integrations.dicom.header`). The file is written and fsynced in a pool thread while
the handler's thread builds the row (the commit waits for the file). The association runs on the
event-driven classes of :mod:`integrations.dicom.transport` (pynetdicom polls with 1 ms sleeps),
with a 1 MiB maximum PDU (dcmtk sends at most 128 KiB; pynetdicom's default is 16 KiB) and
pynetdicom's standard logging handlers unbound (they copy each data set). TCP_NODELAY on accepted
sockets stops Nagle stalls on the response. pynetdicom's STORE_RECV_CHUNKED_DATASET is not used:
it writes an unsynced temporary file elsewhere, flushing every fragment, which is then copied.
What remains per instance is pynetdicom's PDU/DIMSE handling, ``record_instance`` (SQLAlchemy
ORM, the largest share) and three fsyncs (file, folder, database commit).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.imaging.service import InstanceMeta, record_failure, record_instance
from clinic.patients.service import PatientDemographics
from clinic.settings import Settings
from integrations.dicom.allowlist import CACHE_SECONDS as ALLOWLIST_CACHE_SECONDS
from integrations.dicom.allowlist import CallingAEAllowList, handle_requested
from integrations.dicom.errors import (
    DatasetEncodingError,
    DicomReceiveError,
    MissingAttributeError,
    SOPClassMismatchError,
    SOPInstanceMismatchError,
    UnsupportedSOPClassError,
)
from integrations.dicom.header import InstanceHeader, read_header
from integrations.dicom.scu import VERIFICATION_SOP_CLASS
from integrations.dicom.status import EchoStatus, StoreStatus, store_status_for
from integrations.dicom.storage import InstanceStore, StoredFile, encode_file_meta, validate_uid
from integrations.dicom.transport import FAST_PATH_SUPPORTED, FastRequestHandler

LOGGER = logging.getLogger(__name__)

#: ``receive_failures.channel`` of this listener.
CHANNEL = "dicom-cstore"

#: Storage SOP classes we accept (PS3.4 B.5): the modalities the platform reads.
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    CTImageStorage,
    EnhancedCTImageStorage,
    MRImageStorage,
    EnhancedMRImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    SecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
)

#: Storage SOP classes whose IODs have no Pixel Data: SR documents (PS3.3 A.35) and key object
#: selections (A.35.4). DICOMweb STOW-RS stores them (AI result SRs); the image rule of
#: :func:`_check` skips them.
NON_IMAGE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    }
)

#: Transfer syntaxes we accept (PS3.5 Annex A); the data set is stored as received in any of them.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: Largest P-DATA-TF PDU we accept (PS3.8 D.1). dcmtk sends at most 128 KiB; pynetdicom peers
#: send up to this. 16 KiB (pynetdicom's default) costs ~20 % more receive CPU per 0.5 MB instance.
MAXIMUM_PDU_SIZE = 1024 * 1024

# Column sizes of clinic.imaging / clinic.patients; longer values are clipped, never refused.
_CLIP = {"accession": 64, "description": 200, "code": 16, "body_part": 64, "id": 64, "name": 200}


@dataclass
class StoreContext:
    """What the C-STORE and C-ECHO handlers need, bound to them when the server starts."""

    store: InstanceStore
    session_factory: sessionmaker[Session]
    sop_classes: frozenset[str] = frozenset(STORAGE_SOP_CLASSES)
    #: Writes files while the handler's thread builds the row; ``None``: write, then index.
    writer: ThreadPoolExecutor | None = None
    #: Stored instances and refusals since start (for the status page and the benchmark).
    stored: int = 0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _instance_locks: tuple[threading.Lock, ...] = field(
        default_factory=lambda: tuple(threading.Lock() for _ in range(64)), repr=False
    )

    def instance_lock(self, sop_instance_uid: str) -> threading.Lock:
        """Serialises two associations storing the same SOP instance at once, so that a store whose
        row loses a race can never remove the file the winner's row points at. (Today the
        database serialises them too, through record_instance's update of the series row; this
        keeps the guarantee here, where the file is handled.)"""
        return self._instance_locks[hash(sop_instance_uid) % len(self._instance_locks)]

    def count(self, success: bool) -> None:
        with self._lock:
            if success:
                self.stored += 1
            else:
                self.refused += 1


def _clip(value: str, kind: str) -> str:
    return value[: _CLIP[kind]]


def _check(header: InstanceHeader, sop_class_uid: str, sop_instance_uid: str, ctx: StoreContext) -> None:
    """The rules a data set must meet before it is stored (PS3.4 B.2.3, PS3.7 §9.1.1.1)."""
    if sop_class_uid not in ctx.sop_classes:
        raise UnsupportedSOPClassError(f"SOP class {sop_class_uid} is not stored here")
    if not header.sop_class_uid:
        raise MissingAttributeError("SOPClassUID")
    if header.sop_class_uid != sop_class_uid:
        raise SOPClassMismatchError(
            f"data set SOP Class UID {header.sop_class_uid[:64]} differs from the request's {sop_class_uid}"
        )
    if not header.sop_instance_uid:
        raise MissingAttributeError("SOPInstanceUID")
    if header.sop_instance_uid != sop_instance_uid:
        raise SOPInstanceMismatchError("data set SOP Instance UID differs from the request's")
    validate_uid(header.study_uid, "StudyInstanceUID")
    validate_uid(header.series_uid, "SeriesInstanceUID")
    validate_uid(header.sop_instance_uid, "SOPInstanceUID")
    if not header.has_pixel_data and sop_class_uid not in NON_IMAGE_SOP_CLASSES:
        # Every other SOP class we store is an image IOD: Pixel Data is Type 1 (PS3.3 C.7.6.3). A
        # data set cut off at an element boundary before it is caught here.
        raise MissingAttributeError("PixelData")


def _instance_meta(
    header: InstanceHeader, stored: StoredFile, transfer_syntax: str, calling_ae: str
) -> InstanceMeta:
    return InstanceMeta(
        patient=PatientDemographics(
            identifier=_clip(header.patient_id, "id"),
            issuer=_clip(header.issuer_of_patient_id, "id"),
            name=_clip(header.patient_name, "name"),
            birth_date=header.patient_birth_date,
            sex=_clip(header.patient_sex, "code"),
        ),
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=transfer_syntax,
        file_path=stored.relative_path,
        file_size=stored.size,
        modality=_clip(header.modality, "code"),
        body_part=_clip(header.body_part, "body_part"),
        view_position=_clip(header.view_position, "code"),
        series_number=header.series_number,
        series_description=_clip(header.series_description, "description"),
        instance_number=header.instance_number,
        accession_number=_clip(header.accession_number, "accession"),
        study_date=header.study_date,
        study_description=_clip(header.study_description, "description"),
        rows=header.rows,
        columns=header.columns,
        calling_ae=_clip(calling_ae, "code"),
    )


def safe_reason(error: BaseException) -> str:
    """A reason for logs, failure rows and Error Comments that holds no PHI.

    Our own errors carry only identifiers and structure. Database errors can echo bound values
    (a patient's name in an INSERT), so only their class and, for connection-level faults, the
    driver's first line are kept; OS errors keep their errno text.
    """
    if isinstance(error, DicomReceiveError):
        return str(error)
    if isinstance(error, sa_exc.DBAPIError):
        origin = error.orig
        detail = ""
        if isinstance(error, sa_exc.OperationalError) and origin is not None:
            detail = ": " + str(origin).strip().splitlines()[0][:200] if str(origin).strip() else ""
        return f"database error {type(origin).__name__ if origin else type(error).__name__}{detail}"
    if isinstance(error, sa_exc.SQLAlchemyError):
        return f"database error {type(error).__name__}"
    if isinstance(error, OSError):
        return f"storage error: {error.strerror or type(error).__name__}"
    return f"internal error {type(error).__name__}"


def _status_dataset(status: StoreStatus, reason: str) -> Dataset:
    """A failure status with an Error Comment (0000,0902), LO: at most 64 characters."""
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = reason.encode("ascii", "replace").decode()[:64]
    return rsp


def _record_refusal(
    ctx: StoreContext, status: StoreStatus, reason: str, calling_ae: str, sop_class: str, sop_instance: str
) -> None:
    try:
        with unit_of_work(ctx.session_factory) as session:
            record_failure(
                session,
                channel=CHANNEL,
                status_code=int(status),
                reason=reason,
                calling_ae=_clip(calling_ae, "code"),
                sop_class_uid=sop_class[:64],
                sop_instance_uid=sop_instance[:64],
            )
    except Exception as exc:  # the database may be what failed; the answer still goes out
        LOGGER.error("could not record the refusal of sop_instance=%s: %s", sop_instance, safe_reason(exc))


def store_instance(
    ctx: StoreContext,
    raw: bytes | memoryview,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    calling_ae: str = "",
) -> StoredFile:
    """Check, store durably and index one received data set; raise on any failure.

    The row is committed only after the file is durable, so that a crash between the two leaves
    a file without a row (re-indexable by a re-send), never a row without its file. With
    ``ctx.writer`` the file is written and fsynced in a pool thread while this thread runs the
    ORM work of the unit of work (the two overlap: fsync releases the GIL), and the commit waits
    for the file.
    """
    header = read_header(raw, transfer_syntax)
    _check(header, sop_class_uid, sop_instance_uid, ctx)
    file_meta = encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, calling_ae)
    chunks = (file_meta, raw)
    planned = StoredFile(
        path=ctx.store.path_for(header.study_uid, header.series_uid, header.sop_instance_uid),
        relative_path=ctx.store.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid),
        size=len(file_meta) + len(raw),
        replaced=False,
    )
    meta = _instance_meta(header, planned, transfer_syntax, calling_ae)
    with ctx.instance_lock(header.sop_instance_uid):
        return _store_and_index(ctx, header, chunks, meta)


def _store_and_index(
    ctx: StoreContext, header: InstanceHeader, chunks: tuple[bytes, bytes | memoryview], meta: InstanceMeta
) -> StoredFile:
    args = (header.study_uid, header.series_uid, header.sop_instance_uid, chunks)
    if ctx.writer is None:
        stored = ctx.store.write(*args)
        try:
            with unit_of_work(ctx.session_factory) as session:
                record_instance(session, meta)
        except BaseException:
            ctx.store.discard(stored)
            raise
        return stored
    future = ctx.writer.submit(ctx.store.write, *args)
    try:
        with unit_of_work(ctx.session_factory) as session:
            record_instance(session, meta)
            stored = future.result()  # the commit (leaving the block) waits for a durable file
    except BaseException:
        try:
            written: StoredFile | None = future.result()  # never release *raw* mid-write
        except BaseException:
            written = None  # the write failed and removed its temporary file
        if written is not None:
            ctx.store.discard(written)
        raise
    return stored


def handle_store(event: Event, ctx: StoreContext) -> int | Dataset:
    """EVT_C_STORE: store, then acknowledge. Never raises; answers a status (PS3.4 B.2.3)."""
    started = time.perf_counter()
    sop_class = ""
    sop_instance = ""
    calling_ae = ""
    try:
        request = cast(C_STORE, event.request)
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        calling_ae = str(event.assoc.requestor.ae_title or "").strip()
        transfer_syntax = str(event.context.transfer_syntax)
        if request.DataSet is None:  # pynetdicom's STORE_RECV_CHUNKED_DATASET mode: not used here
            raise DatasetEncodingError("no data set in the C-STORE request")
        with request.DataSet.getbuffer() as raw:  # the bytes as received: no copy, no decode
            stored = store_instance(
                ctx,
                raw,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax=transfer_syntax,
                calling_ae=calling_ae,
            )
    except Exception as exc:
        status = store_status_for(exc)
        reason = safe_reason(exc)
        ctx.count(success=False)
        LOGGER.warning(
            "C-STORE refused: sop_instance=%s sop_class=%s from=%s status=%s (0x%04X): %s",
            sop_instance,
            sop_class,
            calling_ae,
            status.name,
            status,
            reason,
        )
        _record_refusal(ctx, status, reason, calling_ae, sop_class, sop_instance)
        return _status_dataset(status, reason)
    ctx.count(success=True)
    LOGGER.debug(
        "C-STORE stored sop_instance=%s (%d bytes) in %.1f ms",
        sop_instance,
        stored.size,
        (time.perf_counter() - started) * 1000,
    )
    return int(StoreStatus.SUCCESS)


def handle_echo(event: Event, ctx: StoreContext) -> int:
    """EVT_C_ECHO: the Verification service (PS3.4 Annex A)."""
    LOGGER.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
    return int(EchoStatus.SUCCESS)


class _AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on accepted sockets.

    DIMSE is request/response: with Nagle on, the response to a C-STORE can wait for the delayed
    ACK of the peer (~40 ms on Linux; DESIGN.md §10).
    """

    daemon_threads = True

    def __init__(self, *args: Any, tcp_nodelay: bool = True, **kwargs: Any) -> None:
        self.tcp_nodelay = tcp_nodelay
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        if self.tcp_nodelay:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # An accepted socket does not inherit the listening socket's timeout: without one, a
        # peer that sends half a PDU and waits holds an association thread for ever.
        client.settimeout(self.ae.network_timeout)
        return client, address


class ScpServer:
    """A running C-ECHO/C-STORE SCP; stop it with :meth:`shutdown` (or use it as a context)."""

    def __init__(
        self,
        ae: AE,
        server: _AssociationServer,
        context: StoreContext,
        engine: Engine | None,
    ) -> None:
        self.ae = ae
        self.server = server
        self.context = context
        self._engine = engine
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def ae_title(self) -> str:
        return str(self.server.ae_title)

    def _serve(self) -> None:
        self._serving.set()
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self._stopped.set()

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._serve, name=f"dicom-scp:{self.port}", daemon=True)
        self._thread.start()
        self._serving.wait()

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`shutdown` is called from another one (or Ctrl-C)."""
        try:
            self._serve()
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting associations, let running ones finish for *timeout* s, then abort them."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._serving.is_set() and not self._stopped.is_set():
            socketserver.BaseServer.shutdown(self.server)  # ends serve_forever, waits for it
        self.server.server_close()
        if self.server in self.ae._servers:
            self.ae._servers.remove(self.server)
        # Established associations may finish what they are doing; the others (a peer that
        # connected and said nothing yet) would only wait for the ACSE timeout.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(a.is_established for a in self.server.active_associations):
            time.sleep(0.02)
        for assoc in self.server.active_associations:
            assoc.abort()
        if self.context.writer is not None:
            self.context.writer.shutdown(wait=True)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        LOGGER.info("DICOM SCP on port %d stopped", self.port)

    def __enter__(self) -> ScpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _make_ae(
    settings: Settings, sop_classes: Sequence[str], transfer_syntaxes: Sequence[str], network_timeout: float
) -> AE:
    ae = AE(ae_title=settings.dicom_ae)
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    # Timeouts (s): an idle or stalled peer must not hold a thread forever.
    ae.network_timeout = network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.maximum_associations = 16
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class, list(transfer_syntaxes))
    return ae


def start_scp(
    settings: Settings,
    session_factory: sessionmaker[Session] | None = None,
    *,
    block: bool = False,
    tcp_nodelay: bool = True,
    port: int | None = None,
    network_timeout: float = 60.0,
    fast_path: bool = True,
    on_ready: Callable[[ScpServer], None] | None = None,
    allowlist_cache_seconds: float = ALLOWLIST_CACHE_SECONDS,
) -> ScpServer:
    """Start the C-ECHO/C-STORE SCP on ``settings.dicom_host``:``settings.dicom_port``.

    *session_factory*: when not given, an engine and a session factory are built once here from
    ``settings.resolved_database_url`` and disposed of at shutdown. *port* overrides the
    settings (0: any free port; read it back from ``.port``). *tcp_nodelay* turns Nagle off on
    accepted sockets. *network_timeout*: seconds a peer may stay silent inside an association or a
    PDU before it is dropped. *fast_path*: use the event-driven association classes of
    :mod:`integrations.dicom.transport` (when the installed pynetdicom is one they support). With
    *block* the call serves until the server is shut down (or
    Ctrl-C) and returns the stopped handle; *on_ready* is called with the handle once it listens.
    With ``settings.dicom_allowlist`` unknown calling AEs are refused at association time
    (:mod:`integrations.dicom.allowlist`; the AE table is re-read every *allowlist_cache_seconds*).
    """
    engine: Engine | None = None
    if session_factory is None:
        # hide_parameters: bound values (patient names) never reach an error message or a log.
        engine = make_engine(settings.resolved_database_url, hide_parameters=True)
        session_factory = make_session_factory(engine)
    ae = _make_ae(settings, STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, network_timeout)
    context = StoreContext(
        store=InstanceStore.from_settings(settings),
        session_factory=session_factory,
        writer=ThreadPoolExecutor(max_workers=ae.maximum_associations, thread_name_prefix="dicom-write"),
    )
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [context]),
        (evt.EVT_C_ECHO, handle_echo, [context]),
    ]
    if settings.dicom_allowlist:  # refuse unknown calling AEs at association time (PS3.8 9.3.4)
        allowlist = CallingAEAllowList(session_factory, cache_seconds=allowlist_cache_seconds)
        handlers.append((evt.EVT_REQUESTED, handle_requested, [allowlist]))
    server = cast(
        _AssociationServer,
        ae.make_server(
            (settings.dicom_host, settings.dicom_port if port is None else port),
            evt_handlers=handlers,
            server_class=_AssociationServer,
            tcp_nodelay=tcp_nodelay,
            request_handler=FastRequestHandler if fast_path and FAST_PATH_SUPPORTED else None,
        ),
    )
    # pynetdicom's standard logging handlers run on every PDU and DIMSE message whatever the log
    # level: the C-STORE-RQ one copies the whole data set (getvalue()) to test it for emptiness
    # and formats a dozen lines. Together ~10 % of the receive CPU; handle_store logs instead.
    server.unbind(evt.EVT_PDU_RECV, standard_pdu_recv_handler)
    server.unbind(evt.EVT_PDU_SENT, standard_pdu_sent_handler)
    server.unbind(evt.EVT_DIMSE_RECV, standard_dimse_recv_handler)
    server.unbind(evt.EVT_DIMSE_SENT, standard_dimse_sent_handler)
    ae._servers.append(server)
    handle = ScpServer(ae, server, context, engine)
    LOGGER.info(
        "DICOM SCP %s listening on %s:%d (%d storage SOP classes, TCP_NODELAY=%s, fast path=%s)",
        handle.ae_title,
        handle.host,
        handle.port,
        len(STORAGE_SOP_CLASSES),
        tcp_nodelay,
        fast_path and FAST_PATH_SUPPORTED,
    )
    if block:
        if on_ready is not None:
            on_ready(handle)
        handle.serve_forever()
        return handle
    handle.start()
    if on_ready is not None:
        on_ready(handle)
    return handle
