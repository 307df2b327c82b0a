"""The calling-AE allow-list of our SCP (``CLINIC_DICOM_ALLOWLIST``), decided at association time.

With the allow-list on, an association whose calling AE title is not a known remote AE allowed to
store (``clinic dicom ae add TITLE --store``) is refused before any DIMSE message with an
A-ASSOCIATE-RJ: result *rejected-permanent*, source *DICOM UL service-user*, reason *calling-AE-
title-not-recognized* (PS3.8 §9.3.4, Table 9-21). pynetdicom's static ``require_calling_aet`` would
need a restart for every change; here an ``EVT_REQUESTED`` handler asks a cache that reads the
``remote_aes`` table at most every :data:`CACHE_SECONDS`, so a newly added AE may store within
seconds. If the table cannot be read and nothing was read before, the association is refused
*transient* (the peer may try again later).

Each refusal is logged (AE title and address, no patient data can be in an association request)
and recorded as a ``receive_failures`` row of channel :data:`CHANNEL`, at most one row per
calling AE and address every :data:`RECORD_EVERY_SECONDS` (a device that retries every second
must not fill the table).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.service import record_failure
from clinic.network.service import allowed_calling_aes

LOGGER = logging.getLogger(__name__)

#: ``receive_failures.channel`` of refused associations.
CHANNEL = "dicom-association"
#: Seconds a read of the allowed AE titles is used before the table is read again.
CACHE_SECONDS = 2.0
#: Least seconds between two failure rows for the same calling AE and address.
RECORD_EVERY_SECONDS = 10.0

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21).
RESULT_REJECTED_PERMANENT = 0x01
RESULT_REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON = 0x01
REASON_CALLING_AE_NOT_RECOGNISED = 0x03


def rejection_code(result: int, source: int, reason: int) -> int:
    """The ``receive_failures.status_code`` of a refused association: 0xRRSSDD (result, source,
    reason of the A-ASSOCIATE-RJ), e.g. 0x010103; it is no DIMSE status."""
    return (result << 16) | (source << 8) | reason


class CallingAEAllowList:
    """The AE titles that may associate with us, read from the database through a short cache."""

    def __init__(self, session_factory: sessionmaker[Session], cache_seconds: float = CACHE_SECONDS) -> None:
        self.session_factory = session_factory
        self.cache_seconds = cache_seconds
        self._titles: frozenset[str] | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self._recorded: dict[tuple[str, str], float] = {}

    def titles(self) -> frozenset[str] | None:
        """The allowed titles; ``None`` when they could never be read."""
        with self._lock:
            if time.monotonic() - self._read_at < self.cache_seconds:
                return self._titles
            try:
                with unit_of_work(self.session_factory) as session:
                    self._titles = allowed_calling_aes(session)
            except Exception as exc:  # the database is away: keep the last answer if there is one
                LOGGER.error("allow-list: cannot read the remote AEs (%s)", type(exc).__name__)
            else:
                self._read_at = time.monotonic()
            return self._titles

    def should_record(self, calling_ae: str, address: str) -> bool:
        now = time.monotonic()
        key = (calling_ae, address)
        with self._lock:
            if now - self._recorded.get(key, float("-inf")) < RECORD_EVERY_SECONDS:
                return False
            if len(self._recorded) > 10_000:  # a scan with random titles: forget the oldest window
                self._recorded.clear()
            self._recorded[key] = now
            return True


def _record(allowlist: CallingAEAllowList, calling_ae: str, address: str, code: int, reason: str) -> None:
    if not allowlist.should_record(calling_ae, address):
        return
    try:
        with unit_of_work(allowlist.session_factory) as session:
            record_failure(
                session, channel=CHANNEL, status_code=code, reason=reason, calling_ae=calling_ae[:16]
            )
    except Exception as exc:  # the refusal still goes out
        LOGGER.error("allow-list: cannot record the refusal of %r (%s)", calling_ae, type(exc).__name__)


def handle_requested(event: Event, allowlist: CallingAEAllowList) -> None:
    """EVT_REQUESTED: refuse the association unless its calling AE title is allowed to store."""
    assoc = event.assoc
    request = cast(A_ASSOCIATE, assoc.requestor.primitive)
    calling_ae = str(request.calling_ae_title or "").strip()
    titles = allowlist.titles()
    if titles is not None and calling_ae in titles:
        return
    address = str(assoc.requestor.address)  # the host: each association has a new port
    if titles is None:
        result, reason_code = RESULT_REJECTED_TRANSIENT, REASON_NO_REASON
        reason = f"association rejected (transient): allow-list unavailable; calling AE {calling_ae!r}"
    else:
        result, reason_code = RESULT_REJECTED_PERMANENT, REASON_CALLING_AE_NOT_RECOGNISED
        reason = (
            f"association rejected: calling AE title {calling_ae!r} not recognised "
            f"(not a remote AE allowed to store) from {assoc.requestor.address}"
        )
    LOGGER.warning("%s (port %s)", reason, assoc.requestor.port)
    assoc.acse.send_reject(result, SOURCE_SERVICE_USER, reason_code)
    _record(allowlist, calling_ae, address, rejection_code(result, SOURCE_SERVICE_USER, reason_code), reason)
    assoc.kill()  # as pynetdicom does after its own rejections: ends the DUL once the peer closes
