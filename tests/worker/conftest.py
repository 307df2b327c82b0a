"""Worker tests against real processes and servers: ``python -m worker`` subprocesses, SQLite or
PostgreSQL, the embedded filesystem broker, Redis (a dedicated db number, flushed) and RabbitMQ (a
vhost per test, made with rabbitmqctl). Nothing is mocked; every wait has a deadline.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import AIRead, AnalysisJob
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.imaging.models import Study
from clinic.imaging.service import InstanceMeta, record_instance
from clinic.migrate import upgrade
from clinic.patients.service import PatientDemographics
from clinic.settings import Environment, Settings
from tests.conftest import REPO_ROOT, free_port

DX_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation

MODES = [
    "embedded",
    pytest.param("postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    pytest.param("postgres-rabbitmq", marks=[pytest.mark.postgres, pytest.mark.rabbitmq]),
]


# --- brokers ---------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a free port, which a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        wait_for(lambda: _ping(client), timeout=20, what="private redis-server to answer")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- waiting ---------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll *predicate* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- a platform under test: settings, database, worker processes ----------------------------------


@dataclass
class Stack:
    """One running mode: settings as the worker gets them (env) and as the test uses them."""

    mode: str
    settings: Settings
    env: dict[str, str]
    session_factory: sessionmaker[Session]
    tmp_path: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(
        self, *args: str, name: str = "worker", extra_env: dict[str, str] | None = None
    ) -> WorkerProcess:
        proc = WorkerProcess(self, name=f"{name}-{len(self.workers)}", args=args, extra_env=extra_env or {})
        self.workers.append(proc)
        proc.start()
        return proc

    # database views -----------------------------------------------------------------------------

    def reads(self, study_id: int) -> list[AIRead]:
        with unit_of_work(self.session_factory) as session:
            return list(session.scalars(select(AIRead).where(AIRead.study_id == study_id)).all())

    def read_count(self, study_id: int) -> int:
        with unit_of_work(self.session_factory) as session:
            return int(
                session.scalar(select(func.count()).select_from(AIRead).where(AIRead.study_id == study_id))
                or 0
            )

    def job(self, study_id: int) -> AnalysisJob | None:
        with unit_of_work(self.session_factory) as session:
            return session.scalars(select(AnalysisJob).where(AnalysisJob.study_id == study_id)).one_or_none()

    def study_id(self, study_uid: str) -> int | None:
        with unit_of_work(self.session_factory) as session:
            return session.scalar(select(Study.id).where(Study.study_uid == study_uid))

    # what the DICOM SCP does: store the file, then index it -------------------------------------

    def store(self, ds: Dataset) -> str:
        """Write *ds* under the DICOM folder and record the instance; returns the study UID."""
        s = self.settings
        rel = Path("dicom") / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        path = s.resolved_data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        meta = InstanceMeta(
            patient=PatientDemographics(identifier=str(ds.PatientID), name=str(ds.get("PatientName", ""))),
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            file_path=rel.as_posix(),
            file_size=path.stat().st_size,
            modality=str(ds.get("Modality", "")),
            body_part=str(ds.get("BodyPartExamined", "")),
            view_position=str(ds.get("ViewPosition", "")),
            series_number=int(ds.get("SeriesNumber", 1) or 1),
            instance_number=int(ds.get("InstanceNumber", 1) or 1),
            accession_number=str(ds.get("AccessionNumber", "")),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
        )
        with unit_of_work(self.session_factory) as session:
            record_instance(session, meta)
        return str(ds.StudyInstanceUID)


class WorkerProcess:
    """``python -m worker`` as a subprocess, its output in a log file."""

    def __init__(self, stack: Stack, name: str, args: tuple[str, ...], extra_env: dict[str, str]) -> None:
        self.stack = stack
        self.args = args
        self.env = {**stack.env, **extra_env}
        self.log_path = stack.tmp_path / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", *self.args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: self.alive_or_fail() and ("ready." in self.log() or "relay running" in self.log()),
            timeout=60,
            what=f"worker to start (log: {self.log_path})",
        )

    def alive_or_fail(self) -> bool:
        assert self.proc is not None
        code = self.proc.poll()
        assert code is None, f"worker exited with {code}:\n{self.log()[-4000:]}"
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine or the OOM killer takes it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (warm shutdown); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise AssertionError(f"worker did not stop within {timeout} s of SIGTERM") from None
        return int(self.proc.returncode)


def make_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mode: str,
    models_dir: Path,
    broker_url: str | None = None,
    **overrides: Any,
) -> Stack:
    data_dir = tmp_path / "var"
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "environment": Environment.TEST,
        "models_dir": models_dir,
        "series_quiet_seconds": 0.5,
        "inference_device": "cpu",
        **overrides,
    }
    if mode != "embedded":
        values["database_url"] = request.getfixturevalue("pg_database")
    if broker_url is not None:
        values["broker_url"] = broker_url
    elif mode == "postgres-redis":
        values["broker_url"] = request.getfixturevalue("redis_db")
    elif mode == "postgres-rabbitmq":
        values["broker_url"] = request.getfixturevalue("rabbitmq_vhost")
    settings = Settings(**values)
    settings.ensure_dirs()
    if mode == "embedded":
        upgrade(settings.resolved_database_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINIC_")}
    env.update({f"CLINIC_{key.upper()}": str(value) for key, value in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    engine = make_engine(settings.resolved_database_url)
    request.addfinalizer(engine.dispose)
    return Stack(mode, settings, env, make_session_factory(engine), tmp_path)


@pytest.fixture
def stacks(request: pytest.FixtureRequest) -> Iterator[list[Stack]]:
    """Collects the stacks a test makes and kills their workers afterwards, whatever happened."""
    made: list[Stack] = []
    yield made
    for stack in made:
        for proc in stack.workers:
            proc.kill()


# --- DICOM inputs ------------------------------------------------------------------------------------


def _new_uids(ds: Dataset, patient_id: str) -> Dataset:
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    ds.AccessionNumber = patient_id[-16:]
    return ds


def real_chest_radiograph(patient_id: str | None = None) -> Dataset:
    """pydicom-data's real CR chest radiograph (PA, MONOCHROME1, 1955x1841), with fresh UIDs."""
    path = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(path, str), "pydicom-data is not installed"
    ds = pydicom.dcmread(path)
    return _new_uids(ds, patient_id or f"W{uuid.uuid4().hex[:10]}")


def phantom_radiograph(seed: int = 1, consolidation: bool = True, patient_id: str | None = None) -> Dataset:
    """A synthetic DX chest phantom (inference.demo.phantoms) written as DICOM with pydicom."""
    from inference.demo.phantoms import BITS_STORED, FIELD_OF_VIEW_MM, synth_chest

    phantom = synth_chest(np.random.default_rng(seed), consolidation=consolidation, nodule=False, size=256)
    pixels = np.ascontiguousarray(phantom.image.astype(np.uint16))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_SOP_CLASS
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientName = "PHANTOM^WORKER"
    ds.StudyDate = dt.date.today().strftime("%Y%m%d")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    spacing = FIELD_OF_VIEW_MM / pixels.shape[0]
    ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.PixelData = pixels.tobytes()
    return _new_uids(ds, patient_id or f"P{uuid.uuid4().hex[:10]}")
