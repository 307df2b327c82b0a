"""``clinic``: run, operate and demonstrate the platform.

Every command builds the settings once (CLINIC_* variables, optional TOML file in CLINIC_CONFIG)
and passes them down. Failures print one line and exit non-zero; no tracebacks for users.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from clinicctl import dicom_admin, fhir_admin, hl7_admin
from clinicctl.errors import CliError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="Smart clinic platform: DICOM in, AI reads on Celery workers, the radiologist worklist.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Accounts and roles.", no_args_is_help=True)
models_app = typer.Typer(help="AI models (MONAI bundles).", no_args_is_help=True)
dicom_app = typer.Typer(
    help="DICOM: remote AEs, result deliveries, receive failures, echo.", no_args_is_help=True
)
jobs_app = typer.Typer(help="AI analysis jobs: failures and replay.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(models_app, name="models")
app.add_typer(dicom_app, name="dicom")
app.add_typer(jobs_app, name="jobs")


def _settings():  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from clinic.settings import load_settings

    try:
        return load_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from None


def _session_factory(settings):  # type: ignore[no-untyped-def]
    """Sessions on the configured database, refusing a schema older than the code."""
    from clinic.db import make_engine, make_session_factory
    from clinic.migrate import current, head

    revision, newest = current(settings.resolved_database_url), head()
    if revision != newest:
        raise CliError(
            f"the database schema is at revision {revision or 'none'}, this version needs {newest}: "
            "run `clinic db upgrade`"
        )
    return make_session_factory(make_engine(settings.resolved_database_url))


dicom_admin.register(dicom_app, _settings, _session_factory)
hl7_admin.register(app, _settings, _session_factory)
fhir_admin.register(app, _settings, _session_factory)


# --- db ------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the database schema (Alembic)."""
    from clinic.migrate import current, upgrade

    settings = _settings()
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at revision [bold]{current(settings.resolved_database_url)}[/]")


# --- users ---------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option("--role", help="radiologist, clinic, icu_nurse or admin")],
    password: Annotated[
        str | None, typer.Option("--password", help="Omit to be prompted (not echoed).")
    ] = None,
) -> None:
    """Create an account."""
    from clinic.auth.models import Role
    from clinic.auth.service import create_user
    from clinic.db import unit_of_work
    from clinic.migrate import upgrade

    try:
        role_value = Role(role)
    except ValueError:
        raise CliError(f"unknown role {role!r}: choose one of {', '.join(r.value for r in Role)}") from None
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise CliError("the password must have at least 8 characters")
    settings = _settings()
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    with unit_of_work(_session_factory(settings)) as session:
        user = create_user(session, name, password, role_value)
    console.print(f"user [bold]{user.username}[/] created with role [bold]{user.role}[/]")


# --- worklist ------------------------------------------------------------------------------


@app.command("worklist")
def worklist_cmd(
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 50,
    names: Annotated[bool, typer.Option(help="Show patient names (PHI) next to identifiers.")] = False,
) -> None:
    """Print the radiology worklist, AI-prioritised (the same rows as /radiology)."""
    from clinic.db import unit_of_work
    from clinicctl.output import worklist_table

    settings = _settings()
    from clinic.radiology.service import worklist

    with unit_of_work(_session_factory(settings)) as session:
        rows = worklist(session, settings)
    console.print(worklist_table(rows[:limit], names=names))


# --- models --------------------------------------------------------------------------------


@models_app.command("train-demo")
def models_train_demo(
    force: Annotated[bool, typer.Option(help="Train again even if the bundle exists.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed (training is reproducible).")] = 0,
    model: Annotated[
        str, typer.Option(help="Which demo model: cxr (chest radiograph), ct (CT lung nodules) or all.")
    ] = "all",
) -> None:
    """Train the synthetic demo model(s) into the models folder, unless already there."""
    from clinicctl.models import ensure_demo_models

    settings = _settings()
    ensure_demo_models(settings, console, force=force, seed=seed, model=model)


@models_app.command("list")
def models_list() -> None:
    """List the bundles in the models folder and the studies they read."""
    from clinicctl.models import list_models

    list_models(_settings(), console)


# --- dicom ---------------------------------------------------------------------------------


@dicom_app.command("failures")
def dicom_failures(limit: int = 50) -> None:
    """Objects we refused, with the status we answered and why."""
    from clinicctl.output import failures_table

    settings = _settings()
    from sqlalchemy import select

    from clinic.db import unit_of_work
    from clinic.imaging.models import ReceiveFailure

    with unit_of_work(_session_factory(settings)) as session:
        rows = session.scalars(select(ReceiveFailure).order_by(ReceiveFailure.id.desc()).limit(limit)).all()
        console.print(failures_table(rows))


@dicom_app.command("echo")
def dicom_echo(
    peer: Annotated[
        str | None, typer.Argument(help="AE title of a configured remote AE (`clinic dicom ae list`).")
    ] = None,
    host: str = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Default: CLINIC_DICOM_PORT.")] = None,
    ae: Annotated[str | None, typer.Option(help="Called AE title. Default: CLINIC_DICOM_AE.")] = None,
) -> None:
    """C-ECHO a DICOM peer: a configured remote AE by its title, else HOST:PORT (our own SCP)."""
    from clinicctl.dicom_admin import resolve_peer
    from integrations.dicom.scu import echo

    settings = _settings()
    if peer is not None:  # we call a PACS as ourselves: it knows us by CLINIC_DICOM_AE
        host, called_port, called_ae = resolve_peer(settings, peer)
        ok = echo(host, called_port, called_ae, calling_ae=settings.dicom_ae)
        where = f"{called_ae} at {host}:{called_port}"
    else:
        called_port = port or settings.dicom_port
        ok = echo(host, called_port, ae or settings.dicom_ae)
        where = f"{host}:{called_port}"
    if not ok:
        raise CliError(f"no C-ECHO success from {where}")
    console.print(f"C-ECHO success from {where}")


# --- jobs ----------------------------------------------------------------------------------


@jobs_app.command("failed")
def jobs_failed() -> None:
    """Analysis jobs that failed permanently, with the reason."""
    from clinic.ai.service import failed_jobs
    from clinic.db import unit_of_work
    from clinicctl.output import jobs_table

    settings = _settings()
    with unit_of_work(_session_factory(settings)) as session:
        console.print(jobs_table(failed_jobs(session)))


@jobs_app.command("replay")
def jobs_replay(job_id: int) -> None:
    """Run a failed (or finished) analysis job again; existing reads are kept (idempotent)."""
    from clinic.ai.models import AnalysisJob
    from clinic.ai.service import request_analysis
    from clinic.db import unit_of_work
    from clinic.imaging.models import Study

    settings = _settings()
    with unit_of_work(_session_factory(settings)) as session:
        job = session.get(AnalysisJob, job_id)
        if job is None:
            raise CliError(f"no analysis job {job_id}")
        study = session.get(Study, job.study_id)
        assert study is not None
        request_analysis(session, study, queue=_inference_queue(settings), priority=job.priority)
    console.print(f"job {job_id} queued again")


def _inference_queue(settings) -> str:  # type: ignore[no-untyped-def]
    return "inference.gpu" if settings.inference_device == "cuda" else "inference.cpu"


# --- running -------------------------------------------------------------------------------


@app.command("worker")
def worker_cmd(
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues. Default: all.")] = None,
    concurrency: int = 1,
    relay: Annotated[bool, typer.Option(help="Also run the outbox relay and sweeper.")] = True,
) -> None:
    """Run a Celery worker (and the outbox relay) against the configured broker."""
    from worker.main import run_worker

    settings = _settings()
    run_worker(
        settings,
        queues=queues.split(",") if queues else None,
        concurrency=concurrency,
        with_relay=relay,
    )


@app.command("up")
def up_cmd() -> None:
    """Run the HTTP server, the DICOM SCP and a worker; Ctrl-C or SIGTERM stops them all."""
    from clinicctl.supervisor import Supervisor

    settings = _settings()
    with Supervisor(settings, console) as supervisor:
        supervisor.print_banner()
        supervisor.wait()


@app.command("serve", hidden=True)
def serve_cmd(component: str) -> None:
    """Run one component in the foreground (used by ``clinic up``): http, dicom or mllp."""
    from clinicctl.serve import serve

    serve(_settings(), component)


@app.command("demo")
def demo_cmd(
    studies: Annotated[int, typer.Option(help="Synthetic chest radiograph studies to send.")] = 6,
    stay: Annotated[bool, typer.Option(help="Keep the platform running after the demo until Ctrl-C.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the AI reads.")] = 180.0,
) -> None:
    """Train the demo model if absent, start the platform, send studies, show the worklist."""
    from clinicctl.demo import run_demo

    run_demo(_settings(), console, studies=studies, stay=stay, timeout=timeout)


def main() -> None:
    try:
        app()
    except CliError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a CLI user gets one line, not a traceback
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            err_console.print(f"[bold red]error:[/] database unavailable: {exc.orig}")
        else:
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
            err_console.print("run with CLINIC_DEBUG=1 for the traceback")
            import os

            if os.environ.get("CLINIC_DEBUG"):
                raise
        sys.exit(1)


if __name__ == "__main__":
    main()
