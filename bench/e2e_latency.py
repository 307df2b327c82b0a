"""End-to-end latency: from the last instance of a study to its AI read in the worklist.

Starts ``clinic up`` (embedded mode unless CLINIC_DATABASE_URL / CLINIC_BROKER_URL say otherwise)
on a temporary data dir, sends synthetic chest radiograph studies one at a time with dcmtk's
storescu, and waits for each read. The time is split with the database's own timestamps:

- quiet period: study.completed_at - study.last_received_at (the configured quiet period plus the
  sweeper's granularity),
- queueing: job.started_at - study.completed_at (outbox write, relay publish, broker hop, pickup),
- model: the model's own forward pass + Grad-CAM (read.inference_ms),
- rest: everything else up to the moment the read is visible to a reader of the database
  (image decoding, preprocessing, heatmap files, the commit, our 5 ms polling).

Usage: .venv/bin/python bench/e2e_latency.py [--studies 10] [--quiet 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--quiet", type=float, default=1.0, help="series quiet period, seconds")
    args = parser.parse_args()

    from sqlalchemy import select

    from clinic.ai.models import AIRead, AnalysisJob
    from clinic.db import make_engine, make_session_factory, unit_of_work
    from clinic.imaging.models import Study
    from clinic.settings import Settings
    from inference.demo.phantoms import synth_chest
    from integrations.dicom.synthetic import build_cxr_dataset, write_dataset

    models_dir = Path(os.environ.get("CLINIC_MODELS_DIR", ROOT / "var" / "models"))
    with tempfile.TemporaryDirectory(prefix="clinic-e2e-") as tmp:
        data_dir = Path(tmp) / "var"
        http_port, dicom_port = free_port(), free_port()
        env = {
            **os.environ,
            "CLINIC_DATA_DIR": str(data_dir),
            "CLINIC_MODELS_DIR": str(models_dir),
            "CLINIC_HTTP_PORT": str(http_port),
            "CLINIC_DICOM_PORT": str(dicom_port),
            "CLINIC_SERIES_QUIET_SECONDS": str(args.quiet),
            "TCP_NODELAY": "1",
        }
        settings = Settings(
            data_dir=data_dir, database_url=env.get("CLINIC_DATABASE_URL", ""), models_dir=models_dir
        )
        up = subprocess.Popen(
            [str(Path(sys.executable).parent / "clinic"), "up"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or up.poll() is not None:
                    raise SystemExit("clinic up did not start")
                time.sleep(0.2)
            factory = make_session_factory(make_engine(settings.resolved_database_url))
            rng = np.random.default_rng(7)
            rows = []
            for index in range(args.studies + 1):  # the first study warms the worker up
                phantom = synth_chest(rng, consolidation=index % 2 == 0, nodule=index % 3 == 0)
                ds = build_cxr_dataset(phantom.image, patient_id=f"BENCH{index}", patient_name="BENCH^E2E")
                path = Path(tmp) / f"s{index}.dcm"
                write_dataset(ds, path)
                subprocess.run(
                    ["storescu", "-aec", settings.dicom_ae, "127.0.0.1", str(dicom_port), str(path)],
                    check=True,
                    env=env,
                    capture_output=True,
                )
                uid = str(ds.StudyInstanceUID)
                while True:
                    with unit_of_work(factory) as session:
                        found = session.execute(
                            select(Study, AnalysisJob, AIRead)
                            .join(AnalysisJob, AnalysisJob.study_id == Study.id)
                            .join(AIRead, AIRead.study_id == Study.id)
                            .where(Study.study_uid == uid)
                        ).first()
                    if found is not None:
                        seen = time.time()
                        break
                    time.sleep(0.005)
                study, job, read = found
                total = seen - study.last_received_at.timestamp()
                quiet = (study.completed_at - study.last_received_at).total_seconds()
                queue = (job.started_at - study.completed_at).total_seconds()
                model = read.inference_ms / 1000
                rows.append((total, quiet, queue, model, total - quiet - queue - model))
        finally:
            up.terminate()
            up.wait(timeout=60)

    measured = rows[1:]

    def ms(values: list[float]) -> str:
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        return f"{statistics.median(values) * 1000:.0f} ms (p90 {p90 * 1000:.0f})"

    names = ["total", "quiet period", "queueing", "model", "rest"]
    print(f"\n{len(measured)} studies, quiet period {args.quiet} s, embedded mode; median (p90):\n")
    print("| part | time |\n|---|---|")
    for i, name in enumerate(names):
        print(f"| {name} | {ms([r[i] for r in measured])} |")
    rest = statistics.median(r[4] for r in measured) * 1000
    print(f"\nrest target ≤ 300 ms: {'met' if rest <= 300 else 'NOT met'} ({rest:.0f} ms)")


if __name__ == "__main__":
    main()
