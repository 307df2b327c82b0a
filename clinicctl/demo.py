"""``clinic demo``: the scripted tour a new user sees after ``make demo``.

Trains the demo models if absent, starts the platform (embedded unless configured otherwise), sends
synthetic chest radiograph studies and one chest CT series with a real DICOM client, waits for the
AI reads, prints the worklist and the URL and login to open.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from sqlalchemy import func, select

from clinic.settings import Settings
from clinicctl.errors import CliError

DEMO_USER = "radiologist"
#: The mix of synthetic findings the demo sends, cycled: (consolidation, nodule/mass).
DEMO_CASES = [(True, False), (False, False), (False, True), (True, True), (False, False), (True, False)]


def _demo_login(settings: Settings) -> tuple[str, str]:
    """The demo radiologist's account; its password is generated once and kept in the data dir."""
    from clinic.auth.models import Role, User
    from clinic.auth.service import create_user
    from clinic.db import make_engine, make_session_factory, unit_of_work

    path = settings.resolved_data_dir / "demo-login.txt"
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with unit_of_work(factory) as session:
        exists = session.scalar(select(func.count()).select_from(User).where(User.username == DEMO_USER))
        if exists and path.exists():
            return DEMO_USER, path.read_text().strip()
        password = secrets.token_urlsafe(9)
        if exists:
            from clinic.auth.service import set_password

            set_password(session, DEMO_USER, password)
        else:
            create_user(session, DEMO_USER, password, Role.RADIOLOGIST)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return DEMO_USER, password


def _write_studies(folder: Path, count: int) -> tuple[list[Path], list[str]]:
    from inference.demo.phantoms import synth_chest
    from integrations.dicom.synthetic import build_cxr_dataset, write_dataset

    rng = np.random.default_rng(int(time.time()))
    paths: list[Path] = []
    study_uids: list[str] = []
    for index in range(count):
        consolidation, nodule = DEMO_CASES[index % len(DEMO_CASES)]
        phantom = synth_chest(rng, consolidation=consolidation, nodule=nodule)
        ds = build_cxr_dataset(
            phantom.image,
            patient_id=f"DEMO{index + 1:04d}",
            patient_name=f"DEMO^PATIENT{index + 1:02d}",
            accession_number=f"ACC{int(time.time()) % 100000:05d}{index:02d}",
        )
        path = folder / f"demo-{index:02d}.dcm"
        write_dataset(ds, path)
        paths.append(path)
        study_uids.append(str(ds.StudyInstanceUID))
    ct_paths, ct_study = _write_ct_study(folder, count, rng)
    return paths + ct_paths, [*study_uids, ct_study]


def _write_ct_study(folder: Path, index: int, rng: np.random.Generator) -> tuple[list[Path], str]:
    """One chest CT phantom (48 slices of 512², 0.7 mm pixels, 2.5 mm slices) with a 14 mm and a
    6 mm nodule, for the CT lung-nodule demo model."""
    from inference.demo.ct_phantoms import synth_ct
    from integrations.dicom.synthetic import build_ct_series, write_dataset

    phantom = synth_ct(rng, shape=(48, 512, 512), spacing=(2.5, 0.7, 0.7), nodule_diameters_mm=[14.0, 6.0])
    datasets = build_ct_series(
        phantom.volume,
        phantom.spacing,
        patient_id=f"DEMO{index + 1:04d}",
        patient_name=f"DEMO^PATIENT{index + 1:02d}",
        accession_number=f"ACC{int(time.time()) % 100000:05d}{index:02d}",
    )
    paths = [write_dataset(ds, folder / f"demo-ct-{k:03d}.dcm") for k, ds in enumerate(datasets)]
    return paths, str(datasets[0].StudyInstanceUID)


def run_demo(settings: Settings, console: Console, *, studies: int, stay: bool, timeout: float) -> None:
    from clinic.ai.models import AIRead
    from clinic.db import make_engine, make_session_factory, unit_of_work
    from clinic.imaging.models import Study
    from clinic.migrate import upgrade
    from clinic.radiology.service import worklist
    from clinicctl.models import ensure_demo_models
    from clinicctl.output import progress_bar, worklist_table
    from clinicctl.supervisor import Supervisor
    from integrations.dicom.scu import send_files

    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    ensure_demo_models(settings, console)
    username, password = _demo_login(settings)
    factory = make_session_factory(make_engine(settings.resolved_database_url))

    with Supervisor(settings, console) as supervisor:
        supervisor.print_banner()
        with tempfile.TemporaryDirectory(prefix="clinic-demo-") as tmp:
            paths, study_uids = _write_studies(Path(tmp), studies)
            with progress_bar(console) as progress:
                sending = progress.add_task("C-STORE to the platform", total=len(paths))
                results = send_files(
                    "127.0.0.1",
                    settings.dicom_port,
                    settings.dicom_ae,
                    paths,
                    progress=lambda done, total: progress.update(sending, completed=done, total=total),
                )
                failed = [r for r in results if not r.ok]
                if failed:
                    raise CliError(f"{len(failed)} of {len(paths)} instances were refused: {failed[0]}")
                reading = progress.add_task("AI reads", total=len(study_uids))
                deadline = time.monotonic() + timeout
                done = 0
                while done < len(study_uids):
                    if time.monotonic() > deadline:
                        raise CliError(
                            f"only {done} of {len(study_uids)} studies were read within {timeout:.0f} s; "
                            "see `clinic jobs failed`"
                        )
                    with unit_of_work(factory) as session:
                        done = (
                            session.scalar(
                                select(func.count(func.distinct(AIRead.study_id)))
                                .join(Study, Study.id == AIRead.study_id)
                                .where(Study.study_uid.in_(study_uids))
                            )
                            or 0
                        )
                    progress.update(reading, completed=done)
                    time.sleep(0.25)
        with unit_of_work(factory) as session:
            rows = worklist(session, settings)
        console.print(worklist_table(rows))
        console.print(
            f"\nOpen [bold]{supervisor.http_url}/radiology[/] and log in as "
            f"[bold]{username}[/] / [bold]{password}[/]"
            f"  (kept in {settings.resolved_data_dir / 'demo-login.txt'})"
        )
        console.print("[italic]AI results come from a synthetic demo model — not for clinical use.[/]")
        if stay:
            console.print("The platform keeps running; Ctrl-C stops it.")
            supervisor.wait()
