"""Query/Retrieve SCU (integrations.dicom.qr) against a real PACS: Orthanc (Debian's package).

C-FIND at the STUDY level, C-MOVE to our own C-STORE SCP, C-GET storing on the same association,
and the answers of a PACS that is down or says no.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.models import Instance, Series, Study
from clinic.settings import Settings
from integrations.dicom.qr import (
    InvalidQueryError,
    Peer,
    PeerRefusedError,
    PeerUnavailableError,
    RetrieveStatus,
    find_studies,
    get_contexts,
    get_study,
    move_study,
    study_query,
)
from integrations.dicom.scp import ScpServer, StoreContext
from integrations.dicom.storage import InstanceStore
from integrations.dicom.synthetic import build_cxr_dataset, write_dataset
from tests.conftest import free_port
from tests.integrations.dicom.helpers import pydicom_file
from tests.peers.orthanc import Orthanc


def _upload(
    pacs: Orthanc, folder: Path, patient: str, day: str, modality: str = "DX", seed: int = 0, images: int = 1
) -> str:
    """One study of *images* synthetic radiographs on *day*, stored in the PACS; its UID."""
    study_uid = ""
    for number in range(1, images + 1):
        pixels = np.random.default_rng(seed * 10 + number).integers(0, 4000, (64, 64), dtype=np.uint16)
        ds = build_cxr_dataset(
            pixels,
            patient_id=patient,
            patient_name=f"TEST^{patient}",
            accession_number=f"ACC{seed}",
            modality=modality,  # type: ignore[arg-type]
            study_uid=study_uid or None,
            study_datetime=dt.datetime.fromisoformat(f"{day}T09:30:00"),
            study_description=f"XR CHEST {day}",
            instance_number=number,
        )
        study_uid = str(ds.StudyInstanceUID)
        pacs.upload(write_dataset(ds, folder / f"{patient}-{seed}-{number}.dcm"))
    return study_uid


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the module (stopping one takes ~3 s); each test uses patients of its own."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), "PACS")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def patient() -> str:
    return f"P{uuid.uuid4().hex[:12]}"


def _peer(pacs: Orthanc) -> Peer:
    return Peer(pacs.ae_title, "127.0.0.1", pacs.dicom_port)


def test_query_identifier_refuses_wildcards_and_empty_ids() -> None:
    ds = study_query("P1", issuer="HOSP", modality="DX")
    assert ds.QueryRetrieveLevel == "STUDY" and ds.PatientID == "P1" and ds.IssuerOfPatientID == "HOSP"
    assert ds.ModalitiesInStudy == "DX" and "StudyInstanceUID" in ds and "AccessionNumber" in ds
    assert "IssuerOfPatientID" not in study_query("P1")
    for bad in ("", "  ", "P*", "P?1", "A\\B"):
        with pytest.raises(InvalidQueryError):
            study_query(bad)


def test_get_association_proposes_storage_with_scp_role() -> None:
    contexts, roles = get_contexts()
    assert len(contexts) <= 128  # PS3.8 §9.3.2.2
    role_classes = {str(r.sop_class_uid) for r in roles}
    assert all(r.scp_role and not r.scu_role for r in roles)
    storage = {str(c.abstract_syntax) for c in contexts[1:]}
    assert storage == role_classes and len(storage) >= 10


def test_find_returns_the_patients_studies_of_a_modality(pacs: Orthanc, tmp_path: Path, patient: str) -> None:
    older = _upload(pacs, tmp_path, patient, "2020-01-02", seed=1)
    newer = _upload(pacs, tmp_path, patient, "2021-03-04", seed=2)
    cr = _upload(pacs, tmp_path, patient, "2019-05-06", modality="CR", seed=3)
    _upload(pacs, tmp_path, patient + "X", "2020-07-08", seed=4)

    found = {m.study_uid: m for m in find_studies(_peer(pacs), patient_id=patient, modality="DX")}
    assert set(found) == {older, newer}
    match = found[newer]
    assert match.study_date == dt.date(2021, 3, 4)
    assert match.description == "XR CHEST 2021-03-04"
    assert match.modalities == ("DX",) and match.accession_number == "ACC2" and match.patient_id == patient

    assert {m.study_uid for m in find_studies(_peer(pacs), patient_id=patient)} == {older, newer, cr}
    assert [m.study_uid for m in find_studies(_peer(pacs), patient_id=patient, modality="CR")] == [cr]
    assert find_studies(_peer(pacs), patient_id=patient, modality="MR") == []
    assert find_studies(_peer(pacs), patient_id="NOBODY") == []


def test_move_brings_the_study_into_our_scp(
    pacs: Orthanc,
    tmp_path: Path,
    patient: str,
    scp: ScpServer,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    uid = _upload(pacs, tmp_path, patient, "2020-01-02", seed=1, images=2)
    pacs.add_modality("clinic", scp_settings.dicom_ae, "127.0.0.1", scp.port)

    outcome = move_study(_peer(pacs), uid, destination_ae=scp_settings.dicom_ae, calling_ae="CLINIC")

    assert outcome.status == RetrieveStatus.SUCCESS and outcome.succeeded, outcome.describe()
    assert (outcome.completed, outcome.failed, outcome.warning) == (2, 0, 0)
    assert outcome.describe() == "C-MOVE 0x0000 SUCCESS: 2 completed, 0 failed, 0 warning"
    with unit_of_work(session_factory) as session:
        rows = session.execute(
            select(Instance, Study).join(Series, Series.id == Instance.series_id).join(Study)
        ).all()
        assert len(rows) == 2 and {study.study_uid for _i, study in rows} == {uid}
        assert {instance.calling_ae for instance, _s in rows} == {"PACS"}  # Orthanc's C-STORE SCU
        for instance, _study in rows:
            assert dcmread(scp_settings.resolved_data_dir / instance.file_path).StudyInstanceUID == uid


def test_move_to_a_destination_the_pacs_does_not_know_fails(
    pacs: Orthanc, tmp_path: Path, patient: str
) -> None:
    uid = _upload(pacs, tmp_path, patient, "2020-01-02")
    outcome = move_study(_peer(pacs), uid, destination_ae="UNKNOWN", calling_ae="CLINIC")
    assert outcome.status is not None and not outcome.succeeded and not outcome.transient
    assert outcome.completed == 0
    assert outcome.describe().startswith("C-MOVE 0x")


def test_get_stores_the_study_through_the_durable_path(
    pacs: Orthanc,
    tmp_path: Path,
    patient: str,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    uid = _upload(pacs, tmp_path, patient, "2020-01-02", seed=1, images=2)
    _upload(pacs, tmp_path, patient, "2021-01-02", seed=2)  # another study: not retrieved
    context = StoreContext(store=InstanceStore.from_settings(scp_settings), session_factory=session_factory)

    outcome = get_study(_peer(pacs), uid, context, calling_ae="CLINIC")

    assert outcome.succeeded and (outcome.completed, outcome.failed) == (2, 0), outcome.describe()
    assert outcome.describe().startswith("C-GET 0x0000 SUCCESS")
    assert context.stored == 2 and context.refused == 0
    with unit_of_work(session_factory) as session:
        instances = session.scalars(select(Instance)).all()
        assert len(instances) == 2 and {i.calling_ae for i in instances} == {"PACS"}
        assert {s.study_uid for s in session.scalars(select(Study))} == {uid}
    files = sorted(scp_settings.dicom_dir.rglob("*.dcm"))
    assert len(files) == 2 and not list(scp_settings.dicom_dir.rglob("*.part"))
    assert {str(dcmread(f).SOPInstanceUID) for f in files} == {i.sop_instance_uid for i in instances}


def test_a_pacs_that_is_down_is_a_transient_error(tmp_path: Path) -> None:
    down = Peer("PACS", "127.0.0.1", free_port())  # nothing listens there
    with pytest.raises(PeerUnavailableError, match="no association with PACS@127.0.0.1"):
        find_studies(down, patient_id="PAT1")
    with pytest.raises(PeerUnavailableError):
        move_study(down, "1.2.3", destination_ae="CLINIC")


def test_a_peer_without_the_retrieve_service_refuses(
    scp: ScpServer, scp_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    """Our own C-STORE SCP accepts the storage contexts of a C-GET association but not C-GET."""
    context = StoreContext(store=InstanceStore.from_settings(scp_settings), session_factory=session_factory)
    with pytest.raises(PeerRefusedError, match="does not accept"):
        get_study(Peer("CLINIC", "127.0.0.1", scp.port), "1.2.3", context)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "MR_small_RLE.dcm"])
def test_get_keeps_a_compressed_instance_as_it_is_stored(
    pacs: Orthanc,
    tmp_path: Path,
    name: str,
    scp_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    """A context per compressed syntax lets the PACS send the stored encoding, not a transcoded one."""
    ds = dcmread(pydicom_file(name))
    ds.StudyInstanceUID = generate_uid()
    ds.save_as(tmp_path / name)
    pacs.upload(tmp_path / name)
    context = StoreContext(store=InstanceStore.from_settings(scp_settings), session_factory=session_factory)

    outcome = get_study(_peer(pacs), ds.StudyInstanceUID, context)

    assert outcome.succeeded and outcome.completed == 1, outcome.describe()
    (stored,) = scp_settings.dicom_dir.rglob("*.dcm")
    assert dcmread(stored).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Instance.transfer_syntax_uid)).all() == [ds.file_meta.TransferSyntaxUID]
