"""Helpers of the DICOMweb tests: the real app served by uvicorn on a free port, users and their
tokens, a dicomweb-client session, and DICOM objects to store (pydicom's files, a synthetic chest
radiograph, a highdicom Comprehensive SR)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import httpx
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.auth.models import Role
from clinic.db import unit_of_work
from clinic.imaging.models import Instance, ReceiveFailure
from clinic.settings import Settings
from clinicctl.webapp import build_app
from tests.clinic.helpers import PASSWORD, add_user
from tests.conftest import free_port
from tests.integrations.dicom.helpers import pydicom_file

USERS = {"dr.kim": Role.RADIOLOGIST, "admin.lee": Role.ADMIN, "nurse.park": Role.ICU_NURSE}


@dataclass(frozen=True)
class Server:
    url: str
    tokens: dict[str, str]

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicomweb"

    def headers(self, username: str = "dr.kim") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[username]}"}

    def client(self, username: str = "dr.kim") -> DICOMwebClient:
        """dicomweb-client with the Bearer token on its requests Session."""
        session = create_session()
        session.headers.update(self.headers(username))
        return DICOMwebClient(url=self.dicomweb, session=session)


@contextmanager
def serve(
    settings: Settings, factory: sessionmaker[Session], users: tuple[str, ...] = ("dr.kim",)
) -> Iterator[Server]:
    """The full app (``clinicctl.webapp.build_app``) under uvicorn in a thread, with *users* (of
    :data:`USERS`; each costs two password hashes)."""
    for username in users:
        add_user(factory, username, USERS[username])
    port = free_port()
    config = uvicorn.Config(build_app(settings, factory), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        tokens = {}
        for username in users:
            response = httpx.post(f"{url}/api/auth/token", data={"username": username, "password": PASSWORD})
            assert response.status_code == 200, response.text
            tokens[username] = str(response.json()["access_token"])
        yield Server(url, tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def load_testdata(name: str) -> Dataset:
    return dcmread(pydicom_file(name))


def comprehensive_sr(evidence: Dataset) -> Dataset:
    """A small Comprehensive SR (highdicom) in the study of *evidence*, as an AI result would be."""
    root = hd.sr.ContainerContentItem(name=codes.DCM.Finding)
    root.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Finding,
                value="synthetic demo model - not for clinical use",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Smart Clinic tests",
    )


def instance_count(factory: sessionmaker[Session]) -> int:
    with unit_of_work(factory) as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def failure_rows(factory: sessionmaker[Session]) -> list[ReceiveFailure]:
    with unit_of_work(factory) as session:
        return list(session.scalars(select(ReceiveFailure).order_by(ReceiveFailure.id)))


def data_files(settings: Settings) -> list[Path]:
    """Every file under the DICOM folder (stored instances and any stray temporary file)."""
    return sorted(p for p in settings.dicom_dir.rglob("*") if p.is_file())
