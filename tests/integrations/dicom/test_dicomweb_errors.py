"""Bad input and access control on /dicomweb, sent byte for byte with httpx to the real app.

A refused request gets a 4xx with its reason and leaves nothing behind: no instance row, no file
(not even a temporary one) under the DICOM folder; every refusal is a ``receive_failures`` row.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory
from clinic.migrate import upgrade
from clinic.settings import Environment, Settings
from integrations.dicom.dicomweb import stow
from tests.integrations.dicom.dicomweb_helpers import (
    Server,
    data_files,
    failure_rows,
    instance_count,
    load_testdata,
    serve,
)

BOUNDARY = "dicomweb-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Settings, sessionmaker[Session]]]:
    data_dir = tmp_path_factory.mktemp("dicomweb-errors") / "var"
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir, environment=Environment.TEST)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    try:
        with serve(settings, factory, users=("dr.kim", "admin.lee", "nurse.park")) as running:
            yield running, settings, factory
    finally:
        engine.dispose()


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ct(study: str | None = None) -> Dataset:
    ds = load_testdata("CT_small.dcm")
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _body(*parts: bytes, close: bool = True) -> bytes:
    chunks = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + parts[0]]
    chunks += [f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p for p in parts[1:]]
    return b"".join(chunks) + (f"\r\n--{BOUNDARY}--\r\n".encode() if close else b"")


def _post(
    server: Server, body: bytes, content_type: str = MULTIPART, path: str = "/studies"
) -> httpx.Response:
    headers = {
        **server.headers("admin.lee"),
        "Content-Type": content_type,
        "Accept": "application/dicom+json",
    }
    return httpx.post(f"{server.dicomweb}{path}", content=body, headers=headers, timeout=60)


class Snapshot:
    """Rows and files before a request, to show that a refused one added none."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings, self.factory = settings, factory
        self.instances = instance_count(factory)
        self.files = data_files(settings)
        self.failures = len(failure_rows(factory))

    def assert_nothing_stored(self) -> None:
        assert instance_count(self.factory) == self.instances
        assert data_files(self.settings) == self.files  # no .dcm and no leftover .part file

    def new_failures(self) -> list[tuple[str, int, str]]:
        rows = failure_rows(self.factory)[self.failures :]
        return [(r.channel, r.status_code, r.reason) for r in rows]


@pytest.mark.parametrize(
    ("content_type", "status", "reason"),
    [
        ("application/dicom", 415, "is not multipart/related"),
        (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', 415, "are not stored"),
        ("multipart/related; type=application/dicom", 400, "no boundary"),
        ("not a media type", 415, "not a media type"),
    ],
)
def test_request_that_is_not_a_dicom_multipart_is_refused_whole(
    env: tuple[Server, Settings, sessionmaker[Session]], content_type: str, status: int, reason: str
) -> None:
    server, settings, factory = env
    before = Snapshot(settings, factory)
    response = _post(server, _body(_part10(_ct())), content_type)
    assert response.status_code == status
    assert reason in response.json()["detail"]
    before.assert_nothing_stored()
    assert before.new_failures() == [("dicomweb-stow", status, response.json()["detail"])]


def test_truncated_body_stores_nothing_not_even_its_complete_parts(
    env: tuple[Server, Settings, sessionmaker[Session]],
) -> None:
    server, settings, factory = env
    before = Snapshot(settings, factory)
    whole = _body(_part10(_ct()), _part10(_ct()))
    response = _post(server, whole[: len(whole) - 20_000])  # cut inside the second part's pixels
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"]
    before.assert_nothing_stored()
    assert [f[:2] for f in before.new_failures()] == [("dicomweb-stow", 400)]


def test_parts_that_are_not_dicom_or_cut_short_fail_alone(
    env: tuple[Server, Settings, sessionmaker[Session]],
) -> None:
    server, settings, factory = env
    good, cut = _ct(), _ct()
    before = Snapshot(settings, factory)
    cut_bytes = _part10(cut)
    response = _post(
        server, _body(b"this is not DICOM" * 20, _part10(good), cut_bytes[: len(cut_bytes) - 5000])
    )
    assert response.status_code == 202  # PS3.18 Table 10.5.3-1: some stored, some failed
    answer = Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [good.SOPInstanceUID]
    reasons = [(i.get("ReferencedSOPInstanceUID", ""), i.FailureReason) for i in answer.FailedSOPSequence]
    assert reasons == [("", stow.FailureReason.CANNOT_UNDERSTAND), (cut.SOPInstanceUID, 0xC000)]
    warnings = response.headers.get_list("warning")
    assert any("part 1: not a DICOM PS3.10 file" in w for w in warnings)
    assert any("part 3:" in w and "runs past the end" in w for w in warnings)
    assert instance_count(factory) == before.instances + 1
    assert len(data_files(settings)) == len(before.files) + 1  # the good one; nothing of the cut one
    assert [(c, s) for c, s, _ in before.new_failures()] == [("dicomweb-stow", 0xC000)] * 2


def test_all_parts_refused_is_409_with_reasons(env: tuple[Server, Settings, sessionmaker[Session]]) -> None:
    server, settings, factory = env
    other_study = generate_uid()
    rtplan = load_testdata("rtplan.dcm")  # RT Plan: not a SOP class we store
    before = Snapshot(settings, factory)
    ct = _ct()
    response = _post(server, _body(_part10(ct), _part10(rtplan)), path=f"/studies/{other_study}")
    assert response.status_code == 409
    answer = Dataset.from_json(response.json())
    assert "ReferencedSOPSequence" not in answer
    codes = {i.ReferencedSOPInstanceUID: i.FailureReason for i in answer.FailedSOPSequence}
    assert codes[ct.SOPInstanceUID] == stow.FailureReason.STUDY_INSTANCE_UID_MISMATCH
    before.assert_nothing_stored()
    response = _post(server, _body(_part10(rtplan)))
    assert response.status_code == 409
    (failed,) = Dataset.from_json(response.json()).FailedSOPSequence
    assert failed.FailureReason == stow.FailureReason.SOP_CLASS_NOT_SUPPORTED
    before.assert_nothing_stored()


def test_body_over_the_limit_is_413(
    env: tuple[Server, Settings, sessionmaker[Session]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, settings, factory = env
    monkeypatch.setattr(stow, "MAX_STOW_BYTES", 50_000)  # two CT_small parts: ~80 kB
    before = Snapshot(settings, factory)
    body = _body(_part10(_ct()), _part10(_ct()))
    response = _post(server, body)
    assert response.status_code == 413
    chunked = httpx.post(  # no Content-Length: counted while it arrives
        f"{server.dicomweb}/studies",
        content=iter([body[:30_000], body[30_000:]]),
        headers={**server.headers("admin.lee"), "Content-Type": MULTIPART},
        timeout=60,
    )
    assert chunked.status_code == 413
    before.assert_nothing_stored()


def test_roles_and_tokens(env: tuple[Server, Settings, sessionmaker[Session]]) -> None:
    server, _settings, _factory = env
    url = f"{server.dicomweb}/studies"
    assert httpx.get(url, headers=server.headers("dr.kim")).status_code == 200
    assert httpx.get(url, headers=server.headers("admin.lee")).status_code == 200
    nurse = httpx.get(url, headers=server.headers("nurse.park"))
    assert nurse.status_code == 403
    assert _post_as(server, "nurse.park").status_code == 403
    anonymous = httpx.get(url, follow_redirects=False)
    assert anonymous.status_code == 401 and anonymous.json() == {"detail": "not authenticated"}
    assert httpx.post(url, content=b"x", headers={"Content-Type": MULTIPART}).status_code == 401
    forged = httpx.get(url, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401


def _post_as(server: Server, username: str) -> httpx.Response:
    headers = {**server.headers(username), "Content-Type": MULTIPART}
    return httpx.post(f"{server.dicomweb}/studies", content=_body(_part10(_ct())), headers=headers)


def test_bad_queries_and_unacceptable_media(env: tuple[Server, Settings, sessionmaker[Session]]) -> None:
    server, _settings, _factory = env
    headers = server.headers()
    studies = f"{server.dicomweb}/studies"
    for params, reason in [
        ({"StudyDate": "2020-01-01"}, "YYYYMMDD"),
        ({"limit": "many"}, "limit"),
        ({"includefield": "NoSuchKeyword"}, "includefield"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ]:
        response = httpx.get(studies, params=params, headers=headers)
        assert response.status_code == 400 and reason in response.json()["detail"], params
    ignored = httpx.get(studies, params={"SOPInstanceUID": "1.2.3", "Manufacturer": "X"}, headers=headers)
    assert ignored.status_code == 200
    assert "not supported for matching" in ignored.headers["warning"]
    assert httpx.get(studies, headers={**headers, "Accept": "application/dicom+xml"}).status_code == 406

    ct = _ct()
    assert _post(server, _body(_part10(ct))).status_code == 200
    instance = f"{studies}/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
    jpeg_only = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert httpx.get(instance, headers={**headers, "Accept": jpeg_only}).status_code == 406
    assert httpx.get(f"{instance}/rendered", headers={**headers, "Accept": "image/gif"}).status_code == 406
    bad_window = httpx.get(f"{instance}/rendered", params={"window": "40"}, headers=headers)
    assert bad_window.status_code == 400 and "window" in bad_window.json()["detail"]
    assert httpx.get(f"{instance}/frames/0", headers=headers).status_code == 400
    assert httpx.get(f"{studies}/1.2.3.4/metadata", headers=headers).status_code == 404
    assert httpx.get(f"{studies}/not..a/uid/metadata", headers=headers).status_code == 404
    assert httpx.get(f"{studies}/1.2.x/metadata", headers=headers).status_code == 400
    bare = httpx.get(instance, headers={**headers, "Accept": "application/dicom"})
    assert bare.status_code == 200 and bare.content[128:132] == b"DICM"
