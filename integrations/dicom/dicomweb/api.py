"""The DICOMweb routes under ``/dicomweb`` (PS3.18 §10.4 WADO-RS, §10.5 STOW-RS, §10.6 QIDO-RS).

Thin: parse the request, call :mod:`.stow`, :mod:`.qido` or :mod:`.wado`, answer. Radiologists
and admins may search, retrieve and store (``clinic.auth.deps.require_roles``, Bearer token or the
login cookie); every read of patient data writes an audit row in the request's unit of work, one
per patient touched, and every store one ``create`` row per patient.

SQLite takes its write lock at BEGIN (``clinic.db``), and the request's session begins when the
user is looked up: the routes commit it before they read files or wait for the body, so that a
slow upload, a large metadata answer or a render never holds up the C-STORE SCP or the worker.
"""

from __future__ import annotations

import mmap
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from clinic.audit import service as audit
from clinic.audit.api import audit_read
from clinic.auth.deps import require_roles
from clinic.auth.models import Role, User
from clinic.imaging.models import Instance, Series, Study
from clinic.imaging.render import RenderError
from clinic.web.deps import ClientDep, SessionDep, SettingsDep
from integrations.dicom.dicomweb import qido, stow, wado
from integrations.dicom.dicomweb.json_model import METADATA_CACHE, StoredInstance, dumps
from integrations.dicom.dicomweb.multipart import (
    Buffer,
    MediaType,
    MediaTypeError,
    MultipartError,
    encode_multipart,
    multipart_type,
    new_boundary,
    parse_accept,
    parse_media_type,
    split_multipart,
    validate_boundary,
)
from integrations.dicom.errors import DicomReceiveError
from integrations.dicom.scp import StoreContext
from integrations.dicom.storage import InstanceStore, validate_uid

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

#: Who may search, retrieve and store (issue 3): radiologists and the integration admins.
DICOMWEB_ROLES = (Role.RADIOLOGIST, Role.ADMIN)
Reader = Annotated[User, Depends(require_roles(*DICOMWEB_ROLES))]
Storer = Annotated[User, Depends(require_roles(*DICOMWEB_ROLES))]

DICOM_JSON = "application/dicom+json"
_JSON_TYPES = (DICOM_JSON, "application/json", "application/*", "*/*")
_CONTEXT_LOCK = threading.Lock()
T = TypeVar("T")


# --- helpers --------------------------------------------------------------------------------


def base_url(request: Request) -> str:
    """The DICOMweb service root as the client reached it (``http://host:port/dicomweb``)."""
    return str(request.base_url).rstrip("/") + router.prefix


@contextmanager
def _answers() -> Iterator[None]:
    """The one table from the services' errors to HTTP answers."""
    try:
        yield
    except wado.RetrieveError as exc:
        raise HTTPException(exc.status_code, exc.reason) from exc
    except wado.NotAcceptableError as exc:
        raise HTTPException(406, str(exc)) from exc
    except (qido.QueryError, MediaTypeError) as exc:
        raise HTTPException(400, str(exc)) from exc
    except DicomReceiveError as exc:  # an invalid UID in the URL
        raise HTTPException(400, str(exc)) from exc


def _accept(request: Request) -> list[MediaType]:
    with _answers():
        return parse_accept(request.headers.get("accept"))


def _dicom_json(payload: bytes, status_code: int = 200, warnings: Sequence[str] = ()) -> Response:
    response = Response(payload, status_code=status_code, media_type=DICOM_JSON)
    for text in warnings[:20]:  # RFC 7234 §5.5: 299 "Miscellaneous persistent warning"
        clean = text.encode("ascii", "replace").decode().replace('"', "'")[:200]
        response.headers.append("Warning", f'299 - "{clean}"')
    return response


def _audit(
    session: Session, user: User, client: str, kind: str, uid: str, instances: Sequence[StoredInstance]
) -> None:
    for patient_id in sorted({i.patient_id for i in instances}):
        audit_read(session, user, client, f"dicomweb-{kind}", uid, patient_id)


def _check_uids(*uids: str | None) -> None:
    with _answers():
        for uid in uids:
            if uid is not None:
                validate_uid(uid, "UID in the URL")


def _find(
    session: Session, settings: SettingsDep, study: str, series: str | None = None, sop: str | None = None
) -> list[StoredInstance]:
    _check_uids(study, series, sop)
    with _answers():
        return wado.find_instances(session, settings.resolved_data_dir, study, series, sop)


def _release(session: Session) -> None:
    """Commit the read and its audit rows now: what follows reads only files (see module doc)."""
    session.commit()


# --- QIDO-RS --------------------------------------------------------------------------------


def _search(
    level: qido.Level,
    request: Request,
    session: Session,
    user: User,
    client: str,
    settings: SettingsDep,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    """PS3.18 §10.6: 200 with a JSON array (``[]`` when nothing matches)."""
    _check_uids(study, series)
    if not any(media.type in _JSON_TYPES for media in _accept(request)):
        raise HTTPException(406, "search results are served as application/dicom+json")
    with _answers():
        query = qido.parse_query(level, list(request.query_params.multi_items()), study, series)
        found = qido.search(session, query, base_url(request), settings.resolved_data_dir, METADATA_CACHE)
    for patient_id in sorted(found.patient_ids):
        audit_read(
            session, user, client, "dicomweb-search", level.value, patient_id, request.url.query[:1000]
        )
    return _dicom_json(dumps(found.results), warnings=found.warnings)


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(
    request: Request, user: Reader, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return _search(qido.Level.STUDY, request, session, user, client, settings)


@router.get("/series", summary="QIDO-RS: search for series")
def search_series(
    request: Request, user: Reader, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return _search(qido.Level.SERIES, request, session, user, client, settings)


@router.get("/studies/{study}/series", summary="QIDO-RS: search for a study's series")
def search_study_series(
    study: str, request: Request, user: Reader, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return _search(qido.Level.SERIES, request, session, user, client, settings, study)


@router.get("/instances", summary="QIDO-RS: search for instances")
def search_instances(
    request: Request, user: Reader, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return _search(qido.Level.INSTANCE, request, session, user, client, settings)


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for a study's instances")
def search_study_instances(
    study: str, request: Request, user: Reader, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return _search(qido.Level.INSTANCE, request, session, user, client, settings, study)


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: search for a series' instances")
def search_series_instances(
    study: str,
    series: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    return _search(qido.Level.INSTANCE, request, session, user, client, settings, study, series)


# --- WADO-RS: instances and metadata ----------------------------------------------------------


def _retrieve(
    request: Request, session: Session, user: User, client: str, settings: SettingsDep, *uids: str | None
) -> Response:
    """PS3.18 §10.4.1.1.1-3: the instances, streamed from their files after the audit commits."""
    instances = _find(session, settings, *uids)  # type: ignore[arg-type]
    single = uids[2] is not None
    with _answers():
        syntaxes, bare = wado.dicom_transfer_syntaxes(_accept(request), single)
        targets = [wado.choose_transfer_syntax(i.transfer_syntax_uid, syntaxes) for i in instances]
    if any(not i.path.is_file() for i in instances):
        raise HTTPException(404, "a stored file is missing")
    kind = ("study", "series", "instance")[len([u for u in uids if u]) - 1]
    _audit(session, user, client, kind, str([u for u in uids if u][-1]), instances)
    if bare:
        media = f"{wado.DICOM}; transfer-syntax={targets[0]}"
        return StreamingResponse(wado.stream_instances(instances, targets, None), media_type=media)
    boundary = new_boundary()
    body = wado.stream_instances(instances, targets, boundary)
    return StreamingResponse(body, media_type=multipart_type(wado.DICOM, boundary))


def _metadata(
    request: Request, session: Session, user: User, client: str, settings: SettingsDep, *uids: str | None
) -> Response:
    """PS3.18 §10.4.1.2: the JSON model of every instance's header, bulk data as BulkDataURIs."""
    instances = _find(session, settings, *uids)  # type: ignore[arg-type]
    if not any(media.type in _JSON_TYPES for media in _accept(request)):
        raise HTTPException(406, "metadata is served as application/dicom+json")
    _audit(session, user, client, "metadata", str([u for u in uids if u][-1]), instances)
    _release(session)
    return _dicom_json(wado.metadata(instances, base_url(request), METADATA_CACHE))


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(
    study: str, request: Request, user: Reader, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return _retrieve(request, session, user, client, settings, study, None, None)


@router.get("/studies/{study}/metadata", summary="WADO-RS: a study's metadata")
def study_metadata(
    study: str, request: Request, user: Reader, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return _metadata(request, session, user, client, settings, study, None, None)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(
    study: str,
    series: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    return _retrieve(request, session, user, client, settings, study, series, None)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: a series' metadata")
def series_metadata(
    study: str,
    series: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    return _metadata(request, session, user, client, settings, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{sop}", summary="WADO-RS: retrieve an instance")
def retrieve_instance(
    study: str,
    series: str,
    sop: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    return _retrieve(request, session, user, client, settings, study, series, sop)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/metadata", summary="WADO-RS: an instance's metadata"
)
def instance_metadata(
    study: str,
    series: str,
    sop: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    return _metadata(request, session, user, client, settings, study, series, sop)


# --- WADO-RS: frames, bulk data, rendered -----------------------------------------------------


def _one(session: Session, settings: SettingsDep, study: str, series: str, sop: str) -> StoredInstance:
    instance = _find(session, settings, study, series, sop)[0]
    if not instance.path.is_file():
        raise HTTPException(404, "the stored file is missing")
    return instance


def _in_files(session: Session, work: Callable[[], T]) -> T:
    """Run file work after committing the request's reads and audit rows."""
    _release(session)
    with _answers():
        return work()


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", summary="WADO-RS: frames")
def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    """PS3.18 §10.4.1.1.4: one part per frame, uncompressed unless a compressed type is accepted."""
    instance = _one(session, settings, study, series, sop)
    with _answers():
        numbers = wado.frame_numbers(frames)
        choice = wado.choose_frames(_accept(request), instance.transfer_syntax_uid)
    _audit(session, user, client, "frames", sop, [instance])
    parts = _in_files(session, lambda: wado.read_frames(instance, numbers, choice))
    boundary = new_boundary()
    part_type = parts[0][0].split(";")[0]
    return Response(encode_multipart(parts, boundary), media_type=multipart_type(part_type, boundary))


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}", summary="WADO-RS: bulk data")
def retrieve_bulk_data(
    study: str,
    series: str,
    sop: str,
    tag: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    """PS3.18 §10.4.1.1.5: the value a metadata BulkDataURI names. Pixel Data is sent as its frames."""
    instance = _one(session, settings, study, series, sop)
    number = qido.attribute_tag(tag)
    if number is None:
        raise HTTPException(400, "bulk data is named by its tag (8 hex digits)")
    _audit(session, user, client, "bulkdata", sop, [instance])
    if number == 0x7FE00010:
        with _answers():
            choice = wado.choose_frames(_accept(request), instance.transfer_syntax_uid)
        parts = _in_files(session, lambda: wado.read_frames(instance, None, choice))
    else:
        value = _in_files(session, lambda: wado.read_bulk_data(instance, number))
        parts = [(wado.OCTET_STREAM, value)]
    boundary = new_boundary()
    return Response(
        encode_multipart(parts, boundary), media_type=multipart_type(parts[0][0].split(";")[0], boundary)
    )


def _rendered(
    request: Request,
    session: Session,
    user: User,
    client: str,
    settings: SettingsDep,
    uids: tuple[str, str, str],
    frame: int,
) -> Response:
    """PS3.18 §10.4.1.1.6 (and §8.3.5 query parameters): one frame as JPEG or PNG."""
    instance = _one(session, settings, *uids)
    with _answers():
        fmt = wado.rendered_format(_accept(request))
        params = wado.RenderParams.parse(
            request.query_params.get("window"),
            request.query_params.get("viewport"),
            request.query_params.get("quality"),
        )
    _audit(session, user, client, "rendered", uids[2], [instance])
    try:
        body = _in_files(session, lambda: wado.render(instance, frame, params, fmt))
    except RenderError as exc:
        raise HTTPException(422, str(exc)) from exc
    return Response(body, media_type=fmt.media_type)


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered", summary="WADO-RS: rendered instance")
def rendered_instance(
    study: str,
    series: str,
    sop: str,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    return _rendered(request, session, user, client, settings, (study, series, sop), 1)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
    summary="WADO-RS: rendered frame",
)
def rendered_frame(
    study: str,
    series: str,
    sop: str,
    frame: int,
    request: Request,
    user: Reader,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> Response:
    if frame < 1:
        raise HTTPException(400, "frame numbers start at 1")
    return _rendered(request, session, user, client, settings, (study, series, sop), frame)


# --- STOW-RS --------------------------------------------------------------------------------


def _store_context(request: Request) -> StoreContext:
    """One store context per app: the SCP's store path, with STOW's SOP classes."""
    state = request.app.state
    with _CONTEXT_LOCK:
        context: StoreContext | None = getattr(state, "dicomweb_store", None)
        if context is None:
            context = StoreContext(
                store=InstanceStore.from_settings(state.settings),
                session_factory=state.session_factory,
                sop_classes=stow.STOW_SOP_CLASSES,
            )
            state.dicomweb_store = context
    return context


@asynccontextmanager
async def _request_body(request: Request, spool_dir: Path) -> AsyncIterator[Buffer]:
    """The whole body, at most :data:`stow.MAX_STOW_BYTES`; above the spool threshold it waits in
    an anonymous temporary file (mapped, not read into memory)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > stow.MAX_STOW_BYTES:
        raise stow.StowRequestError(413, f"the body is larger than {stow.MAX_STOW_BYTES} bytes")
    memory, spool, total = bytearray(), None, 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > stow.MAX_STOW_BYTES:
                raise stow.StowRequestError(413, f"the body is larger than {stow.MAX_STOW_BYTES} bytes")
            if spool is None and total > stow.SPOOL_THRESHOLD:
                spool = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 (closed below)
                spool.write(memory)
                memory = bytearray()
            if spool is not None:
                spool.write(chunk)
            else:
                memory += chunk
        if spool is None:
            yield memory
            return
        spool.flush()
        mapped = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            try:
                mapped.close()
            except BufferError:  # a view is still alive; the map goes with it
                pass
    except ClientDisconnect as exc:
        raise stow.StowRequestError(
            400, "the client closed the connection before the end of the body"
        ) from exc
    finally:
        if spool is not None:
            spool.close()


def _multipart_boundary(request: Request) -> tuple[str, MediaType]:
    """PS3.18 §10.5.1.1: ``multipart/related; type="application/dicom"; boundary=...``."""
    try:
        content_type = parse_media_type(request.headers.get("content-type", ""))
    except MediaTypeError as exc:
        raise stow.StowRequestError(415, f"Content-Type: {exc}") from exc
    if content_type.type != "multipart/related":
        raise stow.StowRequestError(
            415, f'{content_type.type} is not multipart/related; type="application/dicom"'
        )
    part_type = content_type.param("type", stow.DICOM_MEDIA_TYPE).lower()
    if part_type != stow.DICOM_MEDIA_TYPE:
        raise stow.StowRequestError(
            415, f"parts of type {part_type[:60]} are not stored; use application/dicom"
        )
    try:
        return validate_boundary(content_type.param("boundary")), MediaType(part_type)
    except MultipartError as exc:
        raise stow.StowRequestError(400, str(exc)) from exc


async def _stow(
    request: Request, session: Session, user: User, client: str, settings: SettingsDep, study: str | None
) -> Response:
    _check_uids(study)
    await run_in_threadpool(_release, session)  # never hold the SQLite write lock while uploading
    context = _store_context(request)
    try:
        boundary, default = _multipart_boundary(request)
        async with _request_body(request, settings.resolved_data_dir) as body:
            try:
                parts = split_multipart(body, boundary)
                for part in parts:
                    stow.check_part_type(part, default)
            except MultipartError as exc:
                raise stow.StowRequestError(400, str(exc)) from exc
            except MediaTypeError as exc:
                raise stow.StowRequestError(415, str(exc)) from exc
            result = await run_in_threadpool(stow.store_parts, context, parts, study)
            del parts  # the views into the body go before the body does
    except stow.StowRequestError as exc:
        await run_in_threadpool(stow.record_refusal, context.session_factory, exc.status_code, exc.reason)
        raise HTTPException(exc.status_code, exc.reason) from exc
    return await run_in_threadpool(_stow_answer, request, session, user, client, result, study)


def _stow_answer(
    request: Request, session: Session, user: User, client: str, result: stow.StowResult, study: str | None
) -> Response:
    """PS3.18 §10.5.3: 200, 202 or 409 with the Store Instances Response; audit rows per patient."""
    stored = [o.sop_instance_uid for o in result.stored]
    located: dict[str, tuple[str, str]] = {}
    patients: set[int] = set()
    if stored:
        for sop, study_uid, series_uid, patient_id in session.execute(
            select(Instance.sop_instance_uid, Study.study_uid, Series.series_uid, Study.patient_id)
            .join(Series, Series.id == Instance.series_id)
            .join(Study, Study.id == Series.study_id)
            .where(Instance.sop_instance_uid.in_(stored))
        ):
            located[sop] = (study_uid, series_uid)
            patients.add(patient_id)
    for patient_id in sorted(patients):
        audit.record(
            session,
            username=user.username,
            role=str(user.role),
            action="create",
            resource_type="dicomweb-stow",
            resource_id=study or "",
            patient_id=patient_id,
            client=client,
            detail=f"{len(stored)} stored, {len(result.failed)} failed",
        )
    body = result.response(base_url(request), study, located)
    return _dicom_json(dumps(body), result.http_status, [o.reason for o in result.failed])


@router.post("/studies", summary="STOW-RS: store instances")
async def store_instances(
    request: Request, user: Storer, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return await _stow(request, session, user, client, settings, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_study_instances(
    study: str, request: Request, user: Storer, session: SessionDep, client: ClientDep, settings: SettingsDep
) -> Response:
    return await _stow(request, session, user, client, settings, study)
