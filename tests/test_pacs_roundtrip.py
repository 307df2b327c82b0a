"""The hospital PACS round trip, with Orthanc as the PACS (a real peer) and the platform started by
``clinic up`` exactly as a user would (embedded mode: SQLite + filesystem broker):

1. Orthanc is registered with ``clinic dicom ae add ORTHANC --store --results`` and the allow-list
   is on, so only Orthanc may store to us.
2. A synthetic chest radiograph is uploaded to Orthanc (REST) and Orthanc pushes it to us by
   C-STORE; the worker reads it, builds a TID 1500 SR and delivers it, through the outbox, back to
   Orthanc, where it lands in the same study and names the model.
3. Orthanc stops. A second study reaches us (dcmtk's storescu, calling as ORTHANC); its SR delivery
   stays pending with failed attempts recorded. Orthanc starts again and the SR arrives: a
   destination that is down delays results and loses none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import AIRead
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.results.models import Delivery, DeliveryStatus, ResultObject
from tests.conftest import free_port
from tests.peers.orthanc import Orthanc
from tests.test_end_to_end import CLINIC, _synthetic_study, _wait_http


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def sr_in_orthanc(orthanc: Orthanc, study_uid: str) -> pydicom.Dataset | None:
    """The SR instance of the study in Orthanc, read back from its file, or ``None``."""
    sid = orthanc.study_id(study_uid)
    if sid is None:
        return None
    for instance in orthanc.get(f"/studies/{sid}/instances"):
        tags = orthanc.get(f"/instances/{instance['ID']}/simplified-tags")
        if tags.get("Modality") == "SR":
            path = orthanc.folder / f"{instance['ID']}.dcm"
            path.write_bytes(orthanc.instance_file(instance["ID"]))
            return pydicom.dcmread(path)
    return None


def texts(ds: pydicom.Dataset) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.VR in ("LO", "UT", "ST", "LT", "SH")}


def study_deliveries(factory: sessionmaker[Session], study_uid: str) -> list[Delivery]:
    from clinic.imaging.models import Study

    with unit_of_work(factory) as session:
        rows = list(
            session.scalars(
                select(Delivery)
                .join(ResultObject, ResultObject.id == Delivery.result_object_id)
                .join(Study, Study.id == ResultObject.study_id)
                .where(Study.study_uid == study_uid)
            )
        )
        for row in rows:
            _ = row.attempt_log
        return rows


@pytest.mark.slow
def test_orthanc_pushes_a_study_and_gets_the_sr_back_even_after_an_outage(
    tmp_path: Path, demo_models_dir: Path, orthanc_factory: Callable[..., Orthanc]
) -> None:
    orthanc = orthanc_factory()
    http_port, dicom_port = free_port(), free_port()
    data_dir = tmp_path / "var"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLINIC_")},
        "CLINIC_DATA_DIR": str(data_dir),
        "CLINIC_MODELS_DIR": str(demo_models_dir),
        "CLINIC_HTTP_PORT": str(http_port),
        "CLINIC_DICOM_PORT": str(dicom_port),
        "CLINIC_MLLP_PORT": str(free_port()),
        "CLINIC_DICOM_AE": "CLINIC",
        "CLINIC_DICOM_ALLOWLIST": "true",
        "CLINIC_SERIES_QUIET_SECONDS": "0.5",
        "CLINIC_DELIVERY_BACKOFF_SECONDS": "0.2",
        "CLINIC_DELIVERY_BACKOFF_CAP_SECONDS": "1",
        "CLINIC_ENVIRONMENT": "test",
        "COLUMNS": "240",
    }

    def clinic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLINIC, *args], env=env, capture_output=True, text=True, timeout=120)

    added = clinic(
        "dicom", "ae", "add", "ORTHANC", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port),
        "--store", "--results", "--description", "hospital PACS (test)",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    orthanc.add_modality("clinic", "CLINIC", "127.0.0.1", dicom_port)
    inputs = tmp_path / "in"
    inputs.mkdir()
    first, second = (_synthetic_study(inputs, i) for i in range(2))
    first_uid = str(pydicom.dcmread(first).StudyInstanceUID)
    second_uid = str(pydicom.dcmread(second).StudyInstanceUID)

    engine = make_engine(f"sqlite:///{data_dir / 'clinic.db'}")
    factory = make_session_factory(engine)
    up = subprocess.Popen([CLINIC, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{http_port}/health", up)
        echoed = clinic("dicom", "echo", "ORTHANC")
        assert echoed.returncode == 0 and "C-ECHO success" in echoed.stdout, echoed.stderr

        # 1-2: Orthanc pushes the study (C-STORE as ORTHANC); the SR comes back into that study.
        uploaded = orthanc.upload(first)
        orthanc.store_to("clinic", [uploaded["ParentStudy"]])
        sr = wait_for(lambda: sr_in_orthanc(orthanc, first_uid), 180, "the SR of study 1 in Orthanc")
        assert sr.Modality == "SR" and sr.StudyInstanceUID == first_uid
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        with unit_of_work(factory) as session:
            (model_name,) = set(session.scalars(select(AIRead.model_name)))
        assert any(model_name in text for text in texts(sr)), model_name
        (delivery,) = study_deliveries(factory, first_uid)
        assert delivery.status == DeliveryStatus.SENT

        # 3: the PACS goes down; a second study still gets read, its SR waits.
        orthanc.stop()
        sent = subprocess.run(
            ["storescu", "-aet", "ORTHANC", "-aec", "CLINIC", "127.0.0.1", str(dicom_port), str(second)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr

        def failing() -> bool:
            rows = study_deliveries(factory, second_uid)
            return bool(rows) and sum(a.outcome == "transient" for a in rows[0].attempt_log) >= 2

        wait_for(failing, 180, "two failed attempts to deliver the SR of study 2")
        (pending,) = study_deliveries(factory, second_uid)
        assert pending.status == DeliveryStatus.PENDING
        assert "association not established" in pending.last_error
        listed = clinic("dicom", "deliveries", "--status", "pending", "--study", second_uid)
        assert listed.returncode == 0, listed.stderr
        assert "Result deliveries (1)" in listed.stdout and "transient" in listed.stdout

        orthanc.start()  # same ports, same storage
        sr2 = wait_for(lambda: sr_in_orthanc(orthanc, second_uid), 60, "the SR of study 2 after the outage")
        assert sr2.StudyInstanceUID == second_uid
        assert sr_in_orthanc(orthanc, first_uid) is not None
        (delivered,) = study_deliveries(factory, second_uid)
        assert delivered.status == DeliveryStatus.SENT
        outcomes = [a.outcome for a in delivered.attempt_log]
        assert outcomes[-1] == "success" and outcomes.count("transient") >= 2
        # Our own SR is an instance of the study on our side too, and never read by a model.
        with unit_of_work(factory) as session:
            assert {r.model_name for r in session.scalars(select(AIRead))} == {model_name}
            assert len(list(session.scalars(select(AIRead)))) == 2
    finally:
        engine.dispose()
        up.send_signal(signal.SIGTERM)
        try:
            output = up.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            up.kill()
            raise AssertionError("clinic up did not stop within 60 s of SIGTERM") from None
    assert up.returncode == 0, output
