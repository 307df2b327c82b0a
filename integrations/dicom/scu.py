"""C-STORE and C-ECHO service class user (PS3.4 Annex A and B) on pynetdicom.

Used by ``clinic demo`` and ``clinic dicom echo`` and by tests. :func:`send_files` sends any number
of Part 10 files over one association, proposing one presentation context per (SOP class,
transfer syntax) pair found in the files' File Meta Information, so that each data set goes as it is
encoded in its file.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from integrations.dicom.status import EchoStatus, StatusCategory, category

LOGGER = logging.getLogger(__name__)

#: Verification SOP Class (PS3.4 A.4).
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
#: PS3.8 §9.3.2.2: at most 128 presentation contexts in one association request.
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class SendResult:
    """The outcome of one file: the status the SCP answered, or why nothing was answered."""

    path: Path
    sop_instance_uid: str
    #: The C-STORE response status; ``None`` when the file was not sent or got no response.
    status: int | None
    #: Error Comment of a failure response, or why the file was not sent.
    error: str = ""
    #: When the association was rejected: the A-ASSOCIATE-RJ result, 1 permanent, 2 transient
    #: (PS3.8 Table 9-21); the peer may accept a transient one later.
    rejection_result: int | None = None

    @property
    def ok(self) -> bool:
        """Stored: Success or a Warning (PS3.4 B.2.3: the SCP stored the instance)."""
        return self.status is not None and category(self.status) in (
            StatusCategory.SUCCESS,
            StatusCategory.WARNING,
        )

    def __str__(self) -> str:
        status = "no response" if self.status is None else f"0x{self.status:04X}"
        return f"{self.path.name} ({self.sop_instance_uid}): {status} {self.error}".strip()


def _nodelay(event: Event) -> None:
    # Nagle delays the last segment of each request behind the peer's delayed ACK (DESIGN.md §10).
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _read_meta(path: Path) -> tuple[str, str, str]:
    """(SOP class UID, SOP instance UID, transfer syntax UID) from a file's File Meta Information."""
    meta = read_file_meta_info(path)
    try:
        return (
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except AttributeError as exc:
        raise InvalidDicomError(f"incomplete File Meta Information: {exc}") from exc


def _make_ae(calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = 1024 * 1024
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 60
    return ae


def send_files(
    host: str,
    port: int,
    called_ae: str,
    paths: Sequence[str | os.PathLike[str]],
    calling_ae: str = "CLINIC-SCU",
    progress: Callable[[int, int], None] | None = None,
) -> list[SendResult]:
    """C-STORE every file in *paths* over one association; one result per path, in order.

    *progress* is called with ``(done, total)`` after each file. A file that cannot be read, or
    whose context the SCP rejected, gets a result with ``status=None`` and the reason; the others
    are still sent. Raises :class:`ValueError` when the files need more than 128 contexts.
    """
    files = [Path(p) for p in paths]
    total = len(files)
    results: list[SendResult | None] = [None] * total
    metas: dict[int, tuple[str, str, str]] = {}
    for index, path in enumerate(files):
        try:
            metas[index] = _read_meta(path)
        except (OSError, InvalidDicomError, ValueError) as exc:
            results[index] = SendResult(path, "", None, f"not a DICOM file: {exc}")
    pairs = sorted({(sop_class, ts) for sop_class, _uid, ts in metas.values()})
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(
            f"{len(pairs)} (SOP class, transfer syntax) pairs: more than {MAX_CONTEXTS} contexts"
        )

    done = sum(r is not None for r in results)
    if progress and done:
        progress(done, total)
    if not pairs:
        return [r for r in results if r is not None]

    ae = _make_ae(calling_ae)
    ae.requested_contexts = [build_context(sop_class, [ts]) for sop_class, ts in pairs]
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        reason, rejection = _not_established(assoc)
        for index in metas:
            results[index] = SendResult(files[index], metas[index][1], None, reason, rejection)
        if progress:
            progress(total, total)
        return [r for r in results if r is not None]
    try:
        for index, (_sop_class, sop_instance, _ts) in metas.items():
            results[index] = _send_one(assoc, files[index], sop_instance)
            done += 1
            if progress:
                progress(done, total)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for index in metas:
        if results[index] is None:
            results[index] = SendResult(files[index], metas[index][1], None, "association ended early")
    return [r for r in results if r is not None]


def _not_established(assoc: Association) -> tuple[str, int | None]:
    """Why an association was not established, and the A-ASSOCIATE-RJ result if it was rejected."""
    if not assoc.is_rejected:
        return "association not established", None
    answer = assoc.acceptor.primitive
    if answer is None or answer.result is None:
        return "association rejected", None
    return (
        f"association rejected ({answer.result_str}, {answer.source_str}: {answer.reason_str})",
        int(answer.result),
    )


def _send_one(assoc: Association, path: Path, sop_instance: str) -> SendResult:
    try:
        ds = dcmread(path)
        response = assoc.send_c_store(ds)
    except ValueError as exc:  # no accepted presentation context for this file
        return SendResult(path, sop_instance, None, str(exc).splitlines()[0])
    except (OSError, InvalidDicomError) as exc:
        return SendResult(path, sop_instance, None, f"cannot read: {exc}")
    if "Status" not in response:
        return SendResult(path, sop_instance, None, "no response (timeout or abort)")
    status = int(response.Status)
    comment = str(response.get("ErrorComment", "") or "")
    if category(status) not in (StatusCategory.SUCCESS, StatusCategory.WARNING):
        LOGGER.warning("C-STORE of sop_instance=%s answered 0x%04X %s", sop_instance, status, comment)
    return SendResult(path, sop_instance, status, comment)


def echo(host: str, port: int, called_ae: str, calling_ae: str = "CLINIC-SCU") -> bool:
    """C-ECHO (PS3.4 Annex A): ``True`` when the peer answers Success."""
    ae = _make_ae(calling_ae)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        response = assoc.send_c_echo()
        return "Status" in response and int(response.Status) == EchoStatus.SUCCESS
    finally:
        if assoc.is_established:
            assoc.release()
