"""Builders for the web tests: real DICOM files, real service calls, real users, real databases."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import SYNTHETIC_DISCLAIMER
from clinic.ai.service import FindingIn, ReadIn, record_read
from clinic.audit.models import AuditEvent
from clinic.auth.models import Role
from clinic.auth.service import create_user
from clinic.db import unit_of_work, utcnow
from clinic.imaging.models import Study
from clinic.imaging.service import InstanceMeta, record_instance
from clinic.patients.service import PatientDemographics
from clinic.settings import Settings

#: A real computed radiograph of the chest (pydicom-data): 1955 x 1841, MONOCHROME1, 15 bits.
CXR_SOURCE = Path(get_testdata_file("RG1_UNCR.dcm"))  # type: ignore[arg-type]
HEATMAP_SIZE = 224
PASSWORD = "correct horse battery staple"
MODEL_NAME = "Demo CXR DenseNet121"
MODEL_VERSION = "0.3.1"


@dataclass(frozen=True)
class StoredStudy:
    study_id: int
    instance_id: int
    patient_id: int
    sop_instance_uid: str
    path: Path


def add_user(factory: sessionmaker[Session], username: str, role: Role, password: str = PASSWORD) -> None:
    with unit_of_work(factory) as session:
        create_user(session, username, password, role)


def token_for(client: TestClient, username: str, password: str = PASSWORD) -> str:
    response = client.post("/api/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def store_cxr(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    patient: str,
    name: str = "DOE^JANE",
    accession: str = "",
    received_at: dt.datetime | None = None,
    order_priority: int = 0,
) -> StoredStudy:
    """Write a copy of the real chest radiograph as a new study and index it (record_instance)."""
    ds = dcmread(CXR_SOURCE)
    ds.PatientID, ds.PatientName = patient, name
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.AccessionNumber = accession or f"A{patient}"
    relative = Path("dicom") / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path = settings.resolved_data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    meta = InstanceMeta(
        patient=PatientDemographics(identifier=patient, name=name),
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        file_path=str(relative),
        file_size=path.stat().st_size,
        modality=ds.Modality,
        body_part=ds.get("BodyPartExamined", ""),
        view_position=ds.get("ViewPosition", ""),
        series_number=1,
        instance_number=1,
        accession_number=ds.AccessionNumber,
        study_description="CHEST PA",
        rows=ds.Rows,
        columns=ds.Columns,
    )
    with unit_of_work(factory) as session:
        recorded = record_instance(session, meta, now=received_at or utcnow())
        study = session.get(Study, recorded.study_id)
        assert study is not None
        study.order_priority = order_priority  # as an imaging order (HL7 ORM / FHIR) would set it
        return StoredStudy(study.id, recorded.instance_id, study.patient_id, ds.SOPInstanceUID, path)


def write_heatmap(settings: Settings, name: str, centre: tuple[float, float] = (0.35, 0.6)) -> str:
    """An 8-bit grayscale heatmap at model resolution with one Gaussian blob; its relative path."""
    y, x = np.mgrid[0:HEATMAP_SIZE, 0:HEATMAP_SIZE] / HEATMAP_SIZE
    blob = np.exp(-(((x - centre[0]) ** 2) + ((y - centre[1]) ** 2)) / (2 * 0.08**2))
    relative = Path("results") / f"{name}.png"
    (settings.resolved_data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(blob * 255).astype(np.uint8), mode="L").save(
        settings.resolved_data_dir / relative
    )
    return str(relative)


def add_read(
    settings: Settings,
    factory: sessionmaker[Session],
    stored: StoredStudy,
    findings: list[tuple[str, str, float, float, int]],
    *,
    heatmaps: bool = True,
    model_version: str = MODEL_VERSION,
) -> list[int]:
    """Record an AI read (record_read) with findings ``(code, label, probability, threshold, urgency)``;
    returns the finding ids."""
    read_in = ReadIn(
        model_id="demo-cxr",
        model_name=MODEL_NAME,
        model_version=model_version,
        sop_instance_uid=stored.sop_instance_uid,
        is_synthetic=True,
        disclaimer=SYNTHETIC_DISCLAIMER,
        inference_ms=58.0,
        findings=tuple(
            FindingIn(
                code=code,
                label=label,
                probability=p,
                threshold=t,
                urgency=u,
                heatmap_path=write_heatmap(settings, f"{stored.study_id}-{code}") if heatmaps else "",
            )
            for code, label, p, t, u in findings
        ),
    )
    with unit_of_work(factory) as session:
        read = record_read(session, stored.study_id, None, read_in)
        return [f.id for f in read.findings]


def png(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def copy_testdata(name: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(get_testdata_file(name), target)  # type: ignore[arg-type]
    return target


def audit_rows(factory: sessionmaker[Session], action: str | None = None) -> list[AuditEvent]:
    """The audit trail, oldest first (only *action* when given)."""
    with unit_of_work(factory) as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if action:
            query = query.where(AuditEvent.action == action)
        return list(session.scalars(query))
