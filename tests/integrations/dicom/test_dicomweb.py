"""DICOMweb with a real client: dicomweb-client (PyPI) against the real app served by uvicorn.

STOW-RS then QIDO-RS on SQLite and PostgreSQL (the matching is SQL); the same stored files then
come back through WADO-RS as instances, metadata, frames, bulk data and rendered images.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, generate_uid
from requests import HTTPError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.audit.models import AuditEvent
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.migrate import upgrade
from clinic.settings import Environment, Settings
from integrations.dicom.synthetic import build_cxr_dataset
from tests.integrations.dicom.dicomweb_helpers import (
    Server,
    comprehensive_sr,
    instance_count,
    load_testdata,
    serve,
)

CT_STUDY = "1.2.826.0.1.3680043.8.498.1001"


def _new_uids(ds: Dataset, study: str | None = None) -> Dataset:
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _studies() -> dict[str, Dataset]:
    """Four patients' studies: CT (2004), MR (2020), JPEG 2000 (2020), synthetic CXR (2021)."""
    ct = _new_uids(load_testdata("CT_small.dcm"), CT_STUDY)
    ct.PatientID, ct.PatientName, ct.StudyDate, ct.AccessionNumber = (
        "KR-100",
        "KIM^MINJI",
        "20040119",
        "ACC100",
    )
    mr = _new_uids(load_testdata("MR_small.dcm"))
    mr.PatientID, mr.PatientName, mr.StudyDate, mr.AccessionNumber = (
        "KR-200",
        "PARK^JISOO",
        "20200315",
        "ACC200",
    )
    j2k = _new_uids(load_testdata("JPEG2000.dcm"))
    j2k.PatientID, j2k.PatientName, j2k.StudyDate, j2k.AccessionNumber = (
        "KR-300",
        "LEE^HANA",
        "20201130",
        "ACC300",
    )
    rng = np.random.default_rng(3)
    cxr = build_cxr_dataset(
        rng.integers(0, 4096, (256, 200), dtype=np.uint16), patient_id="KR-400", patient_name="CHOI^YUNA"
    )
    cxr.StudyDate, cxr.AccessionNumber = "20210704", "ACC400"
    return {"ct": ct, "mr": mr, "j2k": j2k, "cxr": cxr}


def _uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


@pytest.fixture
def web_settings(db_url: str, data_dir: Path) -> Settings:
    s = Settings(data_dir=data_dir, database_url=db_url, environment=Environment.TEST)
    s.ensure_dirs()
    return s


@pytest.fixture
def server(web_settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Server]:
    with serve(web_settings, session_factory) as running:
        yield running


def test_stow_then_qido(server: Server, session_factory: sessionmaker[Session]) -> None:
    client = server.client()
    data = _studies()
    answer = client.store_instances(list(data.values()))
    stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored == {ds.SOPInstanceUID for ds in data.values()}
    assert "FailedSOPSequence" not in answer
    ct = data["ct"]
    # Paths only: dicomweb-client sends "Host" without the port on small STOW requests.
    retrieve_paths = {urlsplit(item.RetrieveURL).path for item in answer.ReferencedSOPSequence}
    assert (
        f"/dicomweb/studies/{CT_STUDY}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
        in retrieve_paths
    )

    sr = comprehensive_sr(ct)  # an AI result SR is stored as a normal instance of the study
    answer = client.store_instances([sr], study_instance_uid=CT_STUDY)
    assert urlsplit(answer.RetrieveURL).path == f"/dicomweb/studies/{CT_STUDY}"
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [sr.SOPInstanceUID]
    assert instance_count(session_factory) == 5

    studies = client.search_for_studies()
    assert len(studies) == 4
    (ct_study,) = client.search_for_studies(search_filters={"PatientID": "KR-100"})
    assert ct_study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "KIM^MINJI"}]}
    assert ct_study["00080061"]["Value"] == ["CT", "SR"]
    assert ct_study["00201206"]["Value"] == [2] and ct_study["00201208"]["Value"] == [2]
    assert ct_study["00080030"]["Value"] == ["072730"]  # Study Time: not indexed, read from the header
    assert urlsplit(ct_study["00081190"]["Value"][0]).path == f"/dicomweb/studies/{CT_STUDY}"
    assert Dataset.from_json(ct_study).StudyID == "1CT1"

    def study_uids(**filters: object) -> set[str]:
        return _uids(client.search_for_studies(search_filters=filters))

    mr, j2k, cxr = data["mr"], data["j2k"], data["cxr"]
    assert study_uids(PatientName="park*") == {mr.StudyInstanceUID}  # case-insensitive PN
    assert study_uids(PatientName="P?RK^JISOO") == {mr.StudyInstanceUID}
    assert study_uids(PatientName="park") == set()
    assert study_uids(PatientID="KR-?00") == {
        CT_STUDY,
        mr.StudyInstanceUID,
        j2k.StudyInstanceUID,
        cxr.StudyInstanceUID,
    }
    assert study_uids(PatientID="kr-100") == set()  # LO matching is case-sensitive on both databases
    assert study_uids(StudyDate="20200101-20201231") == {mr.StudyInstanceUID, j2k.StudyInstanceUID}
    assert study_uids(StudyDate="20201201-") == {cxr.StudyInstanceUID}
    assert study_uids(StudyDate="-20050101") == {CT_STUDY}
    assert study_uids(AccessionNumber="ACC3*") == {j2k.StudyInstanceUID}
    assert study_uids(ModalitiesInStudy="SR") == {CT_STUDY}
    assert study_uids(StudyInstanceUID=f"{CT_STUDY},{cxr.StudyInstanceUID}") == {
        CT_STUDY,
        cxr.StudyInstanceUID,
    }
    assert study_uids(**{"00100020": "KR-200"}) == {mr.StudyInstanceUID}  # by tag
    fuzzy = client.search_for_studies(search_filters={"PatientName": "minji"}, fuzzymatching=True)
    assert _uids(fuzzy) == {CT_STUDY}
    first = client.search_for_studies(limit=2)
    rest = client.search_for_studies(limit=2, offset=2)
    assert len(first) == len(rest) == 2 and not _uids(first) & _uids(rest)
    (included,) = client.search_for_studies(
        search_filters={"PatientID": "KR-100"}, fields=["InstitutionName"]
    )
    assert included["00080080"]["Value"] == ["JFK IMAGING CENTER"]

    series = client.search_for_series(CT_STUDY)
    assert {s["00080060"]["Value"][0] for s in series} == {"CT", "SR"}
    (sr_series,) = client.search_for_series(search_filters={"Modality": "SR"})
    assert sr_series["0020000D"]["Value"] == [CT_STUDY]  # all-series results carry study attributes
    assert sr_series["00100020"]["Value"] == ["KR-100"]
    (ct_instance,) = client.search_for_instances(CT_STUDY, ct.SeriesInstanceUID)
    assert ct_instance["00280010"]["Value"] == [128] and ct_instance["00280100"]["Value"] == [16]
    assert ct_instance["00083002"]["Value"] == [ExplicitVRLittleEndian]
    (found_sr,) = client.search_for_instances(search_filters={"SOPClassUID": sr.SOPClassUID})
    assert found_sr["00080018"]["Value"] == [sr.SOPInstanceUID]
    assert found_sr["00100020"]["Value"] == ["KR-100"]
    assert len(client.search_for_instances(CT_STUDY)) == 2
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []

    with unit_of_work(session_factory) as session:
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.resource_type == "dicomweb-search")
        ).all()
        assert audited and all(e.username == "dr.kim" and e.patient_id is not None for e in audited)
        stores = session.scalars(select(AuditEvent).where(AuditEvent.action == "create")).all()
        assert len({e.patient_id for e in stores}) == 4


# --- WADO-RS on one server for the module (SQLite) --------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Dataset]]]:
    data_dir = tmp_path_factory.mktemp("wado") / "var"
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir, environment=Environment.TEST)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    data = _studies()
    emri = _new_uids(load_testdata("emri_small.dcm"))
    emri.PatientID = "KR-500"
    data["emri"] = emri  # 10 frames
    data["sr"] = comprehensive_sr(data["ct"])
    try:
        with serve(settings, make_session_factory(engine), users=("admin.lee",)) as running:
            running.client("admin.lee").store_instances(list(data.values()))
            yield running, data
    finally:
        engine.dispose()


def _client(stored: tuple[Server, dict[str, Dataset]]) -> tuple[DICOMwebClient, dict[str, Dataset]]:
    return stored[0].client("admin.lee"), stored[1]


def _ids(ds: Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_retrieve_instances_as_stored_or_transcoded(stored: tuple[Server, dict[str, Dataset]]) -> None:
    client, data = _client(stored)
    ct = client.retrieve_instance(*_ids(data["ct"]))
    assert ct.PixelData == data["ct"].PixelData and ct.PatientID == "KR-100"
    j2k = data["j2k"]
    as_stored = client.retrieve_instance(*_ids(j2k), media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == JPEG2000 and as_stored.PixelData == j2k.PixelData
    # Explicit VR Little Endian (the default of application/dicom, PS3.18 §8.7.3.5.2): decoded here
    default = client.retrieve_instance(
        *_ids(j2k), media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert default.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(default.pixel_array, j2k.pixel_array)
    study = client.retrieve_study(data["ct"].StudyInstanceUID)
    assert {ds.SOPInstanceUID for ds in study} == {data["ct"].SOPInstanceUID, data["sr"].SOPInstanceUID}
    (sr,) = client.retrieve_series(data["sr"].StudyInstanceUID, data["sr"].SeriesInstanceUID)
    assert sr.ContentSequence[0].TextValue == "synthetic demo model - not for clinical use"


def test_metadata_json_model_and_bulk_data(stored: tuple[Server, dict[str, Dataset]]) -> None:
    client, data = _client(stored)
    ct = data["ct"]
    (meta,) = client.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "KIM^MINJI"}]}
    assert meta["00280030"] == {"vr": "DS", "Value": [0.661468, 0.661468]}
    pixel_uri = _on_server(stored[0], meta["7FE00010"]["BulkDataURI"])
    assert pixel_uri.startswith(f"{stored[0].dicomweb}/studies/{ct.StudyInstanceUID}/")
    assert client.retrieve_bulkdata(pixel_uri) == [ct.PixelData]
    large = [key for key, value in meta.items() if "BulkDataURI" in value and key != "7FE00010"]
    assert large
    for key in large:  # large private OB elements of the GE header
        uri = _on_server(stored[0], meta[key]["BulkDataURI"])
        assert client.retrieve_bulkdata(uri) == [ct[int(key, 16)].value]
    restored = Dataset.from_json(meta, bulk_data_uri_handler=lambda *_: b"")
    assert restored.SOPInstanceUID == ct.SOPInstanceUID and restored.Rows == 128
    study_meta = client.retrieve_study_metadata(ct.StudyInstanceUID)
    sr_meta = next(m for m in study_meta if m["00080060"]["Value"] == ["SR"])
    assert sr_meta["0040A730"]["vr"] == "SQ" and "7FE00010" not in sr_meta


def test_frames_uncompressed_and_as_stored(stored: tuple[Server, dict[str, Dataset]]) -> None:
    client, data = _client(stored)
    ct, j2k, emri = data["ct"], data["j2k"], data["emri"]
    assert client.retrieve_instance_frames(*_ids(ct), frame_numbers=[1]) == [ct.PixelData]
    frame_bytes = emri.Rows * emri.Columns * 2
    frames = client.retrieve_instance_frames(*_ids(emri), frame_numbers=[2, 5])
    assert frames == [
        emri.PixelData[frame_bytes : 2 * frame_bytes],
        emri.PixelData[4 * frame_bytes : 5 * frame_bytes],
    ]
    (decoded,) = client.retrieve_instance_frames(*_ids(j2k), frame_numbers=[1])
    assert decoded == j2k.pixel_array.astype("<u2").tobytes()
    (compressed,) = client.retrieve_instance_frames(*_ids(j2k), frame_numbers=[1], media_types=("image/jp2",))
    assert compressed == get_frame(j2k.PixelData, 0, number_of_frames=1)
    with pytest.raises(HTTPError) as error:
        client.retrieve_instance_frames(*_ids(emri), frame_numbers=[11])
    assert error.value.response is not None and error.value.response.status_code == 404


def _image(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_rendered_images(stored: tuple[Server, dict[str, Dataset]]) -> None:
    client, data = _client(stored)
    ct, j2k, emri, cxr = data["ct"], data["j2k"], data["emri"], data["cxr"]
    png = _image(client.retrieve_instance_rendered(*_ids(ct), media_types=("image/png",)))
    assert png.format == "PNG" and png.size == (128, 128)
    jpeg = _image(client.retrieve_instance_rendered(*_ids(j2k), media_types=("image/jpeg",)))
    assert jpeg.format == "JPEG" and jpeg.size == (j2k.Columns, j2k.Rows)
    small = _image(
        client.retrieve_instance_rendered(
            *_ids(j2k), media_types=("image/png",), params={"viewport": "512,512"}
        )
    )
    assert small.size == (128, 512)  # 256 wide x 1024 high fitted into 512 x 512, aspect kept
    large = _image(
        client.retrieve_instance_rendered(
            *_ids(cxr), media_types=("image/png",), params={"viewport": "400,512"}
        )
    )
    assert large.size == (400, 512)  # 200 x 256 scaled up
    narrow = client.retrieve_instance_rendered(
        *_ids(ct), media_types=("image/png",), params={"window": "40,80,linear"}
    )
    wide = client.retrieve_instance_rendered(
        *_ids(ct), media_types=("image/png",), params={"window": "40,4000"}
    )
    assert np.asarray(_image(narrow)).std() > np.asarray(_image(wide)).std()
    third = _image(
        client.retrieve_instance_frames_rendered(*_ids(emri), frame_numbers=[3], media_types=("image/png",))
    )
    first = _image(
        client.retrieve_instance_frames_rendered(*_ids(emri), frame_numbers=[1], media_types=("image/png",))
    )
    assert third.size == (64, 64) and not np.array_equal(np.asarray(third), np.asarray(first))
    with pytest.raises(HTTPError) as error:  # an SR has no image representation
        client.retrieve_instance_rendered(*_ids(data["sr"]), media_types=("image/png",))
    assert error.value.response is not None and error.value.response.status_code == 406


def test_metadata_is_cached_per_file_version(stored: tuple[Server, dict[str, Dataset]]) -> None:
    """A re-sent instance (new file) answers its new header, not the cached one."""
    client, data = _client(stored)
    mr = dcmread(io.BytesIO(_encoded(data["mr"])))
    before = client.retrieve_instance_metadata(*_ids(mr))
    assert before.get("00081030", {}).get("Value") != ["RESENT"]
    mr.StudyDescription = "RESENT"
    client.store_instances([mr])
    after = client.retrieve_instance_metadata(*_ids(mr))
    assert after["00081030"]["Value"] == ["RESENT"]


def _on_server(server: Server, uri: str) -> str:
    """dicomweb-client sends "Host" without the port, so the server's absolute URIs lack it."""
    parts = urlsplit(uri)
    return f"{server.url}{parts.path}"


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
