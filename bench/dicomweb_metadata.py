"""DICOMweb metadata: our /dicomweb against Orthanc's DICOMweb plugin, on the same 300-instance series.

    .venv/bin/python bench/dicomweb_metadata.py [--count 300] [--runs 20]

Generates ``--count`` CT instances (pydicom's CT_small.dcm, 256 header elements, with new UIDs: one
study, one series), stores them through our STOW-RS (``POST /dicomweb/studies``, the app served by
uvicorn in a separate process, embedded SQLite) and through Orthanc's (Debian's ``orthanc`` with
``orthanc-dicomweb``), then times over real HTTP with one keep-alive client:

* QIDO-RS ``GET .../studies/{s}/series/{se}/instances`` (the search a viewer makes per series),
* WADO-RS ``GET .../studies/{s}/series/{se}/metadata`` (what OHIF loads before it shows a series),
  cold (the first call after the store: every header is read and converted) and warm,
* Orthanc's REST ``/series/{id}/instances-tags`` (its native answer to the same question), and
* the bare cost of pydicom reading the 300 headers (``dcmread(stop_before_pixels=True)``) and
  converting them (``to_json_dict``) in this process, without HTTP.

Prints p50/p95 (ms) over ``--runs`` and the ratios ours/Orthanc. The machine must be otherwise idle
for figures worth quoting.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "bench.radiologist", "bench password 0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def generate(count: int) -> tuple[str, str, list[bytes]]:
    """*count* Part 10 encodings of CT_small with new UIDs in one series: (study, series, files)."""
    import io

    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = dcmread(str(get_testdata_file("CT_small.dcm")))
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, count + 1):
        source.StudyInstanceUID, source.SeriesInstanceUID = study, series
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.InstanceNumber = number
        source.ImagePositionPatient = [-158.0, -179.0, -75.0 + number]
        buffer = io.BytesIO()
        source.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return study, series, files


def stow_body(files: list[bytes], boundary: str = "bench-boundary") -> tuple[bytes, str]:
    parts = [f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f for f in files]
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(parts) + f"\r\n--{boundary}--\r\n".encode(), content_type


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def start_ours(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Our app under uvicorn in its own process (embedded SQLite), with one radiologist."""
    from clinic.auth.models import Role
    from clinic.auth.service import create_user
    from clinic.db import make_engine, make_session_factory, unit_of_work
    from clinic.migrate import upgrade
    from clinic.settings import Environment, Settings

    settings = Settings(data_dir=data_dir, environment=Environment.TEST)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with unit_of_work(make_session_factory(engine)) as session:
        create_user(session, USER, PASSWORD, Role.RADIOLOGIST)
    engine.dispose()
    port = _free_port()
    command = [sys.executable, __file__, "--serve", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}"


def serve(port: int, data_dir: str) -> None:
    import uvicorn

    from clinic.settings import Environment, Settings
    from clinicctl.webapp import build_app

    settings = Settings(data_dir=Path(data_dir), environment=Environment.TEST)
    uvicorn.run(build_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_orthanc(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Orthanc with its DICOMweb plugin, default plugin options, no compression of its storage."""
    storage = folder / "storage"
    storage.mkdir(parents=True)
    port = _free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "DicomPort": _free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (kept open for the child's life)
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    _wait_http(f"http://127.0.0.1:{port}/system", proc)
    return proc, f"http://127.0.0.1:{port}"


def timings(call: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bare_pydicom(paths: list[Path]) -> None:
    from pydicom import dcmread

    for path in paths:
        dcmread(path, stop_before_pixels=True).to_json_dict(1024, lambda _e: "uri")


def run(count: int, runs: int) -> None:
    import httpx

    study, series, files = generate(count)
    body, content_type = stow_body(files)
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        ours, ours_url = start_ours(Path(tmp) / "var")
        orthanc, orthanc_url = (
            start_orthanc(Path(tmp) / "orthanc") if DICOMWEB_PLUGIN.exists() else (None, "")
        )
        try:
            client = httpx.Client(timeout=120)
            token = client.post(f"{ours_url}/api/auth/token", data={"username": USER, "password": PASSWORD})
            headers = {
                "Authorization": f"Bearer {token.json()['access_token']}",
                "Accept": "application/dicom+json",
            }
            started = time.perf_counter()
            stored = client.post(
                f"{ours_url}/dicomweb/studies",
                content=body,
                headers={**headers, "Content-Type": content_type},
            )
            stow_s = time.perf_counter() - started
            assert stored.status_code == 200, stored.text[:500]
            size = len(body) / 1e6
            print(
                f"STOW-RS ours: {count} instances ({size:.1f} MB) in {stow_s:.2f} s ({count / stow_s:.0f}/s)"
            )
            path = f"/studies/{study}/series/{series}"
            qido = lambda: client.get(f"{ours_url}/dicomweb{path}/instances", headers=headers)  # noqa: E731
            wado = lambda: client.get(f"{ours_url}/dicomweb{path}/metadata", headers=headers)  # noqa: E731
            assert len(qido().json()) == count
            rows.append(("ours WADO-RS series metadata, cold (first call)", timings(wado, 1)))
            assert len(wado().json()) == count
            rows.append(("ours QIDO-RS series instances", timings(qido, runs)))
            rows.append(("ours WADO-RS series metadata, warm", timings(wado, runs)))
            if orthanc is not None:
                started = time.perf_counter()
                answer = client.post(
                    f"{orthanc_url}/dicom-web/studies", content=body, headers={"Content-Type": content_type}
                )
                print(f"STOW-RS Orthanc: {answer.status_code} in {time.perf_counter() - started:.2f} s")
                o_qido = lambda: client.get(f"{orthanc_url}/dicom-web{path}/instances")  # noqa: E731
                o_wado = lambda: client.get(f"{orthanc_url}/dicom-web{path}/metadata")  # noqa: E731
                series_id = client.post(f"{orthanc_url}/tools/lookup", content=series).json()[0]["ID"]
                o_tags = lambda: client.get(f"{orthanc_url}/series/{series_id}/instances-tags")  # noqa: E731
                rows.append(("Orthanc WADO-RS series metadata, cold (first call)", timings(o_wado, 1)))
                assert len(o_qido().json()) == count and len(o_wado().json()) == count
                rows.append(("Orthanc QIDO-RS series instances", timings(o_qido, runs)))
                rows.append(("Orthanc WADO-RS series metadata, warm", timings(o_wado, runs)))
                rows.append(("Orthanc REST /series/{id}/instances-tags", timings(o_tags, runs)))
            paths = sorted((Path(tmp) / "var" / "dicom" / study / series).glob("*.dcm"))
            rows.append(
                (
                    "bare pydicom: read + to_json_dict of the headers",
                    timings(lambda: bare_pydicom(paths), min(runs, 5)),
                )
            )
        finally:
            ours.terminate()
            ours.wait(timeout=15)
            if orthanc is not None:
                orthanc.terminate()
                orthanc.wait(timeout=15)
    report(rows, count, runs)


def report(rows: list[tuple[str, list[float]]], count: int, runs: int) -> None:
    print(f"\n{count}-instance CT series, {runs} runs, ms\n")
    print("| what | p50 | p95 |\n|---|---:|---:|")
    p50 = {}
    for name, values in rows:
        p50[name] = statistics.median(values)
        print(f"| {name} | {p50[name]:.1f} | {percentile(values, 95):.1f} |")
    for ours, theirs in (
        ("ours QIDO-RS series instances", "Orthanc QIDO-RS series instances"),
        ("ours WADO-RS series metadata, warm", "Orthanc WADO-RS series metadata, warm"),
        (
            "ours WADO-RS series metadata, cold (first call)",
            "Orthanc WADO-RS series metadata, cold (first call)",
        ),
        ("ours WADO-RS series metadata, warm", "Orthanc REST /series/{id}/instances-tags"),
        (
            "ours WADO-RS series metadata, cold (first call)",
            "bare pydicom: read + to_json_dict of the headers",
        ),
    ):
        if ours in p50 and theirs in p50:
            print(f"ratio {ours} / {theirs}: {p50[ours] / p50[theirs]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=300, help="instances in the series (default 300)")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per row (default 20)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.data_dir)
        return
    run(args.count, args.runs)


if __name__ == "__main__":
    main()
