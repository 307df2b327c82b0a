"""Our C-STORE/C-ECHO SCP against real peers: dcmtk's storescu and echoscu, and pynetdicom.

Every test runs on SQLite and on PostgreSQL (the ``db_url`` fixtures).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.events import Event
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.imaging.models import Instance, Series, Study
from clinic.patients.models import Patient
from clinic.settings import Settings
from integrations.dicom.scp import ScpServer, start_scp
from integrations.dicom.scu import echo, send_files
from integrations.dicom.status import StoreStatus
from integrations.dicom.storage import IMPLEMENTATION_CLASS_UID

from .helpers import (
    dataset_bytes,
    file_meta,
    instances,
    partial_files,
    pydicom_file,
    require_dcmtk,
    send_raw,
    store_responses,
    stored_files,
    storescu,
    synthetic_file,
)


def _stored_path(settings: Settings, path: Path) -> Path:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Path(
        settings.dicom_dir, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), f"{ds.SOPInstanceUID}.dcm"
    )


def _same_elements(sent: Path, stored: Path) -> None:
    """The stored object holds the sent one: every element and the pixel data bytes."""
    a, b = pydicom.dcmread(sent), pydicom.dcmread(stored)
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID
    # Group lengths and Data Set Trailing Padding are the sender's to drop (dcmtk drops both).
    keys = {e.tag for e in a if e.tag.element != 0 and e.tag != 0xFFFCFFFC}
    for tag in keys:
        assert b[tag].value == a[tag].value, f"{a[tag].keyword or tag} differs"
    assert b.PixelData == a.PixelData


def test_storescu_sends_real_chest_radiographs(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    j2k, uncompressed = pydicom_file("RG1_J2KR.dcm"), pydicom_file("RG1_UNCR.dcm")
    synthetic = [synthetic_file(tmp_path, f"s{i}.dcm", seed=i, accession_number=f"ACC{i}") for i in range(2)]

    # -xv: propose JPEG 2000 lossless besides the uncompressed syntaxes, so the J2K file goes as it is.
    sent = storescu(scp.port, j2k, uncompressed, *synthetic, options=["-xv"])
    assert sent.returncode == 0, sent.stderr
    assert len(store_responses(sent)) == 4
    assert all("(Success)" in line for line in store_responses(sent))

    for path in (j2k, uncompressed, *synthetic):
        stored = _stored_path(scp_settings, path)
        assert stored.is_file()
        _same_elements(path, stored)
        meta = file_meta(stored)
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.SourceApplicationEntityTitle == "STORESCU"
    for path in synthetic:  # pydicom-written files: storescu sends them byte for byte
        assert dataset_bytes(_stored_path(scp_settings, path)) == dataset_bytes(path)

    rows = {row.sop_instance_uid: row for row in instances(session_factory)}
    assert len(rows) == 4
    cr = pydicom.dcmread(j2k, stop_before_pixels=True)
    row = rows[cr.SOPInstanceUID]
    assert row.sop_class_uid == cr.SOPClassUID
    assert row.transfer_syntax_uid == cr.file_meta.TransferSyntaxUID
    assert row.calling_ae == "STORESCU"
    assert (row.rows, row.columns) == (cr.Rows, cr.Columns)
    assert scp_settings.resolved_data_dir / row.file_path == _stored_path(scp_settings, j2k)
    assert row.file_size == _stored_path(scp_settings, j2k).stat().st_size

    with unit_of_work(session_factory) as session:
        synth = pydicom.dcmread(synthetic[0], stop_before_pixels=True)
        study = session.scalars(select(Study).where(Study.study_uid == synth.StudyInstanceUID)).one()
        assert study.accession_number == "ACC0"
        series = session.scalars(select(Series).where(Series.study_id == study.id)).one()
        assert (series.series_uid, series.modality, series.body_part, series.view_position) == (
            synth.SeriesInstanceUID,
            "DX",
            "CHEST",
            "PA",
        )
        patient = session.get(Patient, study.patient_id)
        assert patient is not None
        assert (patient.identifier, patient.name) == ("P0", "TEST^PATIENT0")
    assert partial_files(scp_settings) == []


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", ["-xt"]),  # JPEG-LS lossless
        ("MR_small_RLE.dcm", ["-xr"]),  # RLE lossless
        ("JPEG-LL.dcm", ["-xs"]),  # JPEG lossless, process 14 SV1
        ("MR_small_bigendian.dcm", ["-xb"]),  # explicit VR big endian
        ("MR_small_implicit.dcm", ["-xi"]),  # implicit VR little endian
        ("image_dfl.dcm", ["-xd"]),  # deflated explicit VR little endian
        ("RG3_J2KI.dcm", ["-xw"]),  # JPEG 2000 (lossy)
        ("JPEG-lossy.dcm", ["-xx"]),  # JPEG extended (process 2 and 4)
    ],
)
def test_storescu_transfer_syntaxes(
    name: str,
    options: list[str],
    scp: ScpServer,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    path = pydicom_file(name)
    sent = storescu(scp.port, path, options=options)
    assert sent.returncode == 0, sent.stderr
    assert store_responses(sent) and "(Success)" in store_responses(sent)[0]
    stored = _stored_path(scp_settings, path)
    assert file_meta(stored).TransferSyntaxUID == file_meta(path).TransferSyntaxUID
    if not file_meta(path).TransferSyntaxUID.is_deflated:
        _same_elements(path, stored)
    else:  # the deflated stream is dcmtk's own; what it holds is the same
        assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(path).PixelData
    [row] = instances(session_factory)
    assert row.transfer_syntax_uid == file_meta(path).TransferSyntaxUID


@pytest.mark.parametrize(
    "name",
    [
        "RG1_J2KR.dcm",
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "examples_ybr_color.dcm",
        "SC_rgb_rle.dcm",
        "JPEG-LL.dcm",
    ],
)
def test_stored_bytes_are_the_received_bytes(
    name: str, scp: ScpServer, scp_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent byte for byte (pynetdicom's chunked send), stored byte for byte: no re-encoding."""
    path = pydicom_file(name)
    status = send_raw(scp.port, path, monkeypatch)
    assert status.Status == StoreStatus.SUCCESS
    assert dataset_bytes(_stored_path(scp_settings, path)) == dataset_bytes(path)
    assert (
        pydicom.dcmread(_stored_path(scp_settings, path)).SOPInstanceUID
        == file_meta(path).MediaStorageSOPInstanceUID
    )


def test_echoscu_gets_success(scp: ScpServer) -> None:
    tool = require_dcmtk("echoscu")
    result = subprocess.run(
        [tool, "-v", "-aec", "CLINIC", "127.0.0.1", str(scp.port)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_store_then_acknowledge_storescu(
    scp: ScpServer, scp_settings: Settings, db_url: str, tmp_path: Path
) -> None:
    """Right after each storescu run returns Success, another connection sees the row and the file."""
    observer = make_engine(db_url)
    factory = make_session_factory(observer)
    try:
        for index in range(3):
            path = synthetic_file(tmp_path, f"ack{index}.dcm", seed=10 + index)
            sent = storescu(scp.port, path)
            assert sent.returncode == 0 and "(Success)" in store_responses(sent)[0]
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            with unit_of_work(factory) as session:
                row = session.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one_or_none()
            assert row is not None
            assert (scp_settings.resolved_data_dir / row.file_path).is_file()
    finally:
        observer.dispose()


def test_store_then_acknowledge_at_the_response(
    scp: ScpServer, scp_settings: Settings, db_url: str, tmp_path: Path
) -> None:
    """At the moment the C-STORE response reaches the SCU, the row is committed and the file is
    on disk: checked from another connection inside the SCU's response event."""
    paths = [synthetic_file(tmp_path, f"r{i}.dcm", seed=20 + i) for i in range(4)]
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    observer = make_engine(db_url)
    factory = make_session_factory(observer)
    seen: list[tuple[str, bool, bool]] = []
    lock = threading.Lock()

    def on_response(event: Event) -> None:
        message = event.message
        if type(message).__name__ != "C_STORE_RSP":
            return
        uid = str(message.command_set.AffectedSOPInstanceUID)
        with unit_of_work(factory) as session:
            row = session.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one_or_none()
        on_disk = row is not None and (scp_settings.resolved_data_dir / row.file_path).is_file()
        with lock:
            seen.append((uid, row is not None, on_disk))

    try:
        ae = AE(ae_title="ACKSCU")
        ae.add_requested_context(pydicom.dcmread(paths[0], stop_before_pixels=True).SOPClassUID)
        assoc = ae.associate(
            "127.0.0.1", scp.port, ae_title="CLINIC", evt_handlers=[(evt.EVT_DIMSE_RECV, on_response)]
        )
        assert assoc.is_established
        for path in paths:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == StoreStatus.SUCCESS
        assoc.release()
    finally:
        observer.dispose()
    assert {uid for uid, _, _ in seen} == uids
    assert all(row and on_disk for _, row, on_disk in seen), seen


def test_resent_instance_replaces_the_earlier_copy(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    path = pydicom_file("CT_small.dcm")
    for _ in range(2):
        sent = storescu(scp.port, path)
        assert sent.returncode == 0 and "(Success)" in store_responses(sent)[0]
    assert len(instances(session_factory)) == 1
    assert len(stored_files(scp_settings)) == 1
    assert partial_files(scp_settings) == []


def test_two_associations_at_once(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Two modalities sending the same patient's study at the same time."""
    study = pydicom.uid.generate_uid()
    folders = []
    for side in range(2):
        folder = tmp_path / f"side{side}"
        folder.mkdir()
        for i in range(5):
            synthetic_file(folder, f"{i}.dcm", seed=1, study_uid=study, instance_number=side * 10 + i)
        folders.append(folder)
    tool = require_dcmtk("storescu")
    runs = [
        subprocess.Popen(
            [tool, "+sd", "-aec", "CLINIC", "127.0.0.1", str(scp.port), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for folder in folders
    ]
    for run in runs:
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0, output
    assert len(instances(session_factory)) == 10
    assert len(stored_files(scp_settings)) == 10
    with unit_of_work(session_factory) as session:
        assert len(session.scalars(select(Patient)).all()) == 1
        assert len(session.scalars(select(Study)).all()) == 1


def test_scu_send_files_round_trip(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    paths = [synthetic_file(tmp_path, f"d{i}.dcm", seed=30 + i) for i in range(3)] + [
        pydicom_file("RG1_J2KR.dcm")
    ]
    calls: list[tuple[int, int]] = []
    results = send_files("127.0.0.1", scp.port, "CLINIC", paths, progress=lambda d, t: calls.append((d, t)))
    assert [r.ok for r in results] == [True] * 4
    assert [r.path for r in results] == paths
    assert calls[-1] == (4, 4) and len(calls) == 4
    assert {r.calling_ae for r in instances(session_factory)} == {"CLINIC-SCU"}
    assert len(stored_files(scp_settings)) == 4


@pytest.mark.parametrize("fast_path", [True, False], ids=["event-driven", "stock-pynetdicom"])
def test_both_association_implementations(
    fast_path: bool, scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """The event-driven acceptor (integrations.dicom.transport) and pynetdicom's own behave alike."""
    paths = [synthetic_file(tmp_path, f"f{i}.dcm", seed=40 + i) for i in range(3)]
    with start_scp(scp_settings, session_factory, fast_path=fast_path) as server:
        sent = storescu(server.port, *paths)
        assert sent.returncode == 0, sent.stderr
        assert [line.endswith("(Success)") for line in store_responses(sent)] == [True] * 3
        assert echo("127.0.0.1", server.port, "CLINIC")
    assert len(instances(session_factory)) == 3


def test_sender_killed_mid_transfer_leaves_a_consistent_store(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """storescu dies while sending large files: every stored file has its row and every row its
    file; no temporary file stays; the SCP goes on serving."""
    folder = tmp_path / "big"
    folder.mkdir()
    source = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))  # 7 MB each
    for index in range(6):
        source.SOPInstanceUID = pydicom.uid.generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        source.save_as(folder / f"{index}.dcm")
    tool = require_dcmtk("storescu")
    sender = subprocess.Popen([tool, "+sd", "-aec", "CLINIC", "127.0.0.1", str(scp.port), str(folder)])
    time.sleep(0.4)
    sender.kill()
    sender.wait()
    deadline = time.monotonic() + 10
    while scp.server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    files = {p.stem for p in stored_files(scp_settings)}
    rows = {row.sop_instance_uid for row in instances(session_factory)}
    assert files == rows
    assert partial_files(scp_settings) == []
    assert "(Success)" in store_responses(storescu(scp.port, synthetic_file(tmp_path, "after.dcm")))[0]


def test_same_instance_from_two_senders_at_once(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Both get Success, one row and one file remain, and the row's file is there."""
    path = synthetic_file(tmp_path, "twice.dcm", seed=50, size=512)
    tool = require_dcmtk("storescu")
    runs = [
        subprocess.Popen(
            [tool, "-v", "-aec", "CLINIC", "127.0.0.1", str(scp.port), *[str(path)] * 5],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0, output
        assert output.count("Received Store Response (Success)") == 5, output
    [row] = instances(session_factory)
    assert (scp_settings.resolved_data_dir / row.file_path).is_file()
    assert len(stored_files(scp_settings)) == 1
    assert partial_files(scp_settings) == []
