"""The SCP's calling-AE allow-list (``CLINIC_DICOM_ALLOWLIST``) against real peers: dcmtk's
echoscu/storescu and pynetdicom. Unknown calling AEs are refused at association time with
A-ASSOCIATE-RJ rejected-permanent / service-user / calling-AE-title-not-recognised (PS3.8 Table
9-21); an AE added while the SCP runs may store without a restart.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.models import ReceiveFailure
from clinic.network.service import AEIn, add_ae, get_ae, update_ae, with_changes
from clinic.settings import Settings
from integrations.dicom.allowlist import CHANNEL, rejection_code
from integrations.dicom.scp import ScpServer, start_scp
from integrations.dicom.scu import VERIFICATION_SOP_CLASS

from .helpers import CALLED_AE, instances, require_dcmtk, synthetic_file

CACHE_S = 0.2
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def allowlist_scp(scp_settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[ScpServer]:
    settings = scp_settings.model_copy(update={"dicom_allowlist": True})
    server = start_scp(settings, session_factory, allowlist_cache_seconds=CACHE_S)
    try:
        yield server
    finally:
        server.shutdown()


def echoscu(port: int, calling: str) -> subprocess.CompletedProcess[str]:
    tool = require_dcmtk("echoscu")
    return subprocess.run(
        [tool, "-v", "-aet", calling, "-aec", CALLED_AE, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def storescu_as(port: int, calling: str, path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_dcmtk("storescu")
    return subprocess.run(
        [tool, "-v", "-aet", calling, "-aec", CALLED_AE, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def association_failures(factory: sessionmaker[Session]) -> list[ReceiveFailure]:
    with unit_of_work(factory) as session:
        query = select(ReceiveFailure).where(ReceiveFailure.channel == CHANNEL).order_by(ReceiveFailure.id)
        return list(session.scalars(query))


def test_unknown_calling_ae_is_rejected_then_admitted_once_added(
    allowlist_scp: ScpServer, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    port = allowlist_scp.port
    refused = echoscu(port, "UNKNOWN")
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "Association Rejected" in output and "Calling AE Title Not Recognized" in output, output

    # The same answer, field by field, as pynetdicom reads it (PS3.8 Table 9-21).
    ae = AE(ae_title="UNKNOWN")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED_AE)
    assert assoc.is_rejected
    answer = assoc.acceptor.primitive
    assert answer is not None
    assert (answer.result, answer.result_source, answer.diagnostic) == (0x01, 0x01, 0x03)

    # Nothing was stored from an unknown AE, and the refusal is visible (one row per window).
    sample = synthetic_file(tmp_path, "cxr.dcm")
    assert storescu_as(port, "UNKNOWN", sample).returncode != 0
    assert instances(session_factory) == []
    (row,) = association_failures(session_factory)
    assert row.calling_ae == "UNKNOWN" and row.status_code == rejection_code(1, 1, 3) == 0x010103
    assert "not recognised" in row.reason

    # Added while the SCP runs: admitted within the cache period, no restart.
    with unit_of_work(session_factory) as session:
        add_ae(session, AEIn("UNKNOWN", "127.0.0.1", 104, may_store=True))
    time.sleep(CACHE_S * 2)
    accepted = echoscu(port, "UNKNOWN")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    stored = storescu_as(port, "UNKNOWN", sample)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    (instance,) = instances(session_factory)
    assert instance.calling_ae == "UNKNOWN"

    # Store permission taken away: refused again.
    with unit_of_work(session_factory) as session:
        update_ae(session, "UNKNOWN", with_changes(get_ae(session, "UNKNOWN"), may_store=False))
    time.sleep(CACHE_S * 2)
    assert echoscu(port, "UNKNOWN").returncode != 0


@SQLITE_ONLY
def test_a_disabled_ae_is_refused(allowlist_scp: ScpServer, session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        add_ae(session, AEIn("MODALITY1", "127.0.0.1", 104, may_store=True, enabled=False))
        add_ae(session, AEIn("MODALITY2", "127.0.0.1", 104, may_store=True))
    assert echoscu(allowlist_scp.port, "MODALITY1").returncode != 0
    assert echoscu(allowlist_scp.port, "MODALITY2").returncode == 0


@SQLITE_ONLY
def test_without_the_allowlist_any_calling_ae_may_associate(scp: ScpServer) -> None:
    result = echoscu(scp.port, "ANYONE")
    assert result.returncode == 0, result.stdout + result.stderr
