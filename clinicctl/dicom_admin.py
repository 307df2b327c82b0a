"""``clinic dicom ae ...``, ``clinic dicom deliveries``, ``clinic dicom build-failures`` and
``clinic dicom resend``: the remote AEs (who may store to us, who receives AI results, where priors
live), the delivery of results and the reads whose result objects could not be built.

Every change of an AE writes an audit row (user ``cli:<login>``) in the same unit of work.
Errors print one line (:class:`clinicctl.errors.CliError`).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clinicctl.errors import CliError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from clinic.network.models import RemoteAE
    from clinic.results.service import BuildFailureView, DeliveryView
    from clinic.settings import Settings

console = Console()

ae_app = typer.Typer(
    help="Remote DICOM AEs: who may store to us, who receives AI results.", no_args_is_help=True
)

#: Set by :func:`register`: the CLI's settings and session factory (``clinicctl.main``).
_hooks: dict[str, Callable[..., Any]] = {}

RetrieveOption = Annotated[
    str | None, typer.Option("--retrieve", help="How priors are fetched: move or get.")
]


def _settings() -> Settings:
    settings: Settings = _hooks["settings"]()
    return settings


def _sessions(settings: Settings, *, create: bool = False) -> sessionmaker[Session]:
    """Sessions on the configured database; *create*: make (or migrate) the schema first, so that
    a fresh install can be configured before ``clinic up`` (as ``clinic users add`` does)."""
    if create:
        from clinic.migrate import upgrade

        settings.ensure_dirs()
        upgrade(settings.resolved_database_url)
    import clinic.models  # noqa: F401 - every mapped table, for the foreign keys between slices

    factory: sessionmaker[Session] = _hooks["session_factory"](settings)
    return factory


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):  # no login name (e.g. a container without passwd entry)
        return "cli"


def ae_table(aes: Sequence[RemoteAE]) -> Table:
    table = Table(title=f"Remote AEs ({len(aes)})", title_justify="left")
    for column in (
        "AE title",
        "host",
        "port",
        "enabled",
        "store",
        "results",
        "priors",
        "retrieve",
        "description",
    ):
        table.add_column(column)

    def mark(value: bool) -> Text:
        return Text("yes", style="green") if value else Text("no", style="dim")

    for ae in aes:
        table.add_row(
            Text(ae.ae_title, style="bold"),
            ae.host,
            str(ae.port),
            mark(ae.enabled),
            mark(ae.may_store),
            mark(ae.receives_results),
            mark(ae.query_priors),
            ae.retrieve_method,
            ae.description,
        )
    return table


def deliveries_table(views: Sequence[DeliveryView]) -> Table:
    table = Table(title=f"Result deliveries ({len(views)})", title_justify="left")
    for column in ("id", "status", "to", "object", "study", "tries", "next / sent (UTC)", "attempts"):
        # UIDs are copied from here (`clinic dicom resend UID`): wrapped, never cut
        table.add_column(column, overflow="fold")
    styles = {"sent": "green", "pending": "yellow", "failed": "bold red"}
    for view in views:
        when = view.sent_at if view.sent_at is not None else view.next_attempt_at
        attempts = Text()
        for attempt in view.attempt_log:
            code = f" 0x{attempt.status_code:04X}" if attempt.status_code is not None else ""
            took = f" {attempt.duration_ms:.0f} ms" if attempt.duration_ms is not None else ""
            attempts.append(f"{attempt.at:%H:%M:%S} {attempt.outcome}{code}{took}", style="bold")
            attempts.append(f" {attempt.error}\n" if attempt.error else "\n")
        table.add_row(
            str(view.id),
            Text(view.status, style=styles.get(view.status, "")),
            view.destination,
            f"{view.kind} {view.sop_instance_uid}",
            view.study_uid,
            str(view.attempts),
            f"{when:%Y-%m-%d %H:%M:%S}",
            attempts if view.attempt_log else Text("—", style="dim"),
        )
    return table


def build_failures_table(views: Sequence[BuildFailureView]) -> Table:
    table = Table(title=f"Result objects not built ({len(views)})", title_justify="left")
    for column in ("read", "study", "model", "failed (UTC)", "objects", "reason"):
        table.add_column(column, overflow="fold")
    for view in views:
        table.add_row(
            str(view.read_id),
            view.study_uid,
            f"{view.model_name} {view.model_version}",
            f"{view.failed_at:%Y-%m-%d %H:%M:%S}" if view.failed_at is not None else "—",
            str(view.objects),
            Text(view.reason, style="red"),
        )
    return table


def _audit(session: Session, action: str, title: str, detail: str) -> None:
    from clinic.network.service import audit_change

    audit_change(session, username=_actor(), role="admin", action=action, ae_title=title, detail=detail)


@ae_app.command("add")
def ae_add(
    title: Annotated[str, typer.Argument(help="AE title of the peer (at most 16 characters).")],
    host: Annotated[str, typer.Option("--host", help="Host name or address of the peer.")],
    port: Annotated[int, typer.Option("--port", help="DICOM port of the peer.")],
    store: Annotated[bool, typer.Option("--store/--no-store", help="May store to us (allow-list).")] = True,
    results: Annotated[bool, typer.Option("--results/--no-results", help="Receives our AI results.")] = False,
    priors: Annotated[bool, typer.Option("--priors/--no-priors", help="Is asked for prior studies.")] = False,
    retrieve: RetrieveOption = None,
    description: Annotated[str, typer.Option("--description", help="Free text for the admin.")] = "",
    enabled: Annotated[bool, typer.Option("--enabled/--disabled")] = True,
) -> None:
    """Add a remote AE."""
    from clinic.db import unit_of_work
    from clinic.network import service

    ae_in = service.AEIn(
        ae_title=title,
        host=host,
        port=port,
        description=description,
        may_store=store,
        receives_results=results,
        query_priors=priors,
        retrieve_method=retrieve or "move",
        enabled=enabled,
    )
    settings = _settings()
    try:
        with unit_of_work(_sessions(settings, create=True)) as session:
            ae = service.add_ae(session, ae_in)
            _audit(session, "create", ae.ae_title, service.describe_changes(None, ae_in))
            console.print(ae_table([ae]))
    except service.NetworkError as exc:
        raise CliError(str(exc)) from None


@ae_app.command("update")
def ae_update(
    title: Annotated[str, typer.Argument(help="AE title of the AE to change.")],
    new_title: Annotated[str | None, typer.Option("--title", help="Rename the AE.")] = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    store: Annotated[bool | None, typer.Option("--store/--no-store")] = None,
    results: Annotated[bool | None, typer.Option("--results/--no-results")] = None,
    priors: Annotated[bool | None, typer.Option("--priors/--no-priors")] = None,
    retrieve: RetrieveOption = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled")] = None,
) -> None:
    """Change a remote AE; options left out keep their values."""
    from clinic.db import unit_of_work
    from clinic.network import service

    settings = _settings()
    try:
        with unit_of_work(_sessions(settings)) as session:
            ae = service.get_ae(session, title)
            before = service.to_ae_in(ae)
            after = service.with_changes(
                ae,
                ae_title=new_title,
                host=host,
                port=port,
                may_store=store,
                receives_results=results,
                query_priors=priors,
                retrieve_method=retrieve,
                description=description,
                enabled=enabled,
            )
            ae = service.update_ae(session, title, after)
            _audit(session, "update", ae.ae_title, service.describe_changes(before, after))
            console.print(ae_table([ae]))
    except service.NetworkError as exc:
        raise CliError(str(exc)) from None


@ae_app.command("remove")
def ae_remove(title: Annotated[str, typer.Argument(help="AE title of the AE to remove.")]) -> None:
    """Remove a remote AE (disabled instead, when result deliveries refer to it)."""
    from clinic.db import unit_of_work
    from clinic.network import service

    settings = _settings()
    try:
        with unit_of_work(_sessions(settings)) as session:
            before = service.to_ae_in(service.get_ae(session, title))
            service.remove_ae(session, title)
            kept = service.find_ae(session, before.ae_title) is not None
            _audit(session, "delete", before.ae_title, service.describe_changes(before, None))
    except service.NetworkError as exc:
        raise CliError(str(exc)) from None
    if kept:
        console.print(f"{before.ae_title} disabled (result deliveries refer to it; their history stays)")
    else:
        console.print(f"{before.ae_title} removed")


@ae_app.command("list")
def ae_list() -> None:
    """List the remote AEs."""
    from clinic.db import unit_of_work
    from clinic.network import service

    settings = _settings()
    with unit_of_work(_sessions(settings)) as session:
        console.print(ae_table(service.list_aes(session)))


def deliveries(
    status: Annotated[str | None, typer.Option("--status", help="pending, sent or failed.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this StudyInstanceUID.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show, newest first.")] = 50,
) -> None:
    """AI result objects sent (or to be sent) to the PACS, with every attempt."""
    from clinic.db import unit_of_work
    from clinic.results.models import DeliveryStatus
    from clinic.results.service import list_build_failures, list_deliveries

    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise CliError(
            f"unknown status {status!r}: choose one of {', '.join(s.value for s in DeliveryStatus)}"
        )
    settings = _settings()
    with unit_of_work(_sessions(settings)) as session:
        views = list_deliveries(session, status=status, study_uid=study, limit=limit)
        failed = len(list_build_failures(session, study_uid=study, limit=1000))
    console.print(deliveries_table(views))
    if failed:
        console.print(
            Text(f"{failed} AI read(s) have result objects that could not be built", style="bold red")
            + Text(": see `clinic dicom build-failures`")
        )


def build_failures(
    study: Annotated[str | None, typer.Option("--study", help="Only this StudyInstanceUID.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show, latest failure first.")] = 50,
) -> None:
    """AI reads whose result objects (SR, SEG) could not be built, and why.

    Fix the cause, then `clinic dicom resend STUDY_UID` builds the objects of reads that have none.
    """
    from clinic.db import unit_of_work
    from clinic.results.service import list_build_failures

    settings = _settings()
    with unit_of_work(_sessions(settings)) as session:
        views = list_build_failures(session, study_uid=study, limit=limit)
    console.print(build_failures_table(views))


def resend(
    study_uid: Annotated[str, typer.Argument(help="StudyInstanceUID of the study.")],
    include_sent: Annotated[bool, typer.Option("--all", help="Also send again what was sent.")] = False,
) -> None:
    """Deliver the study's AI result objects again to every current destination."""
    from clinic.audit import service as audit
    from clinic.db import unit_of_work
    from clinic.results.service import UnknownStudyError, replay_study

    settings = _settings()
    try:
        with unit_of_work(_sessions(settings)) as session:
            replay = replay_study(session, settings, study_uid, include_sent=include_sent)
            audit.record(
                session,
                username=_actor(),
                role="admin",
                action="resend",
                resource_type="study-results",
                resource_id=study_uid.strip(),
                detail=f"deliveries {replay.deliveries}, rebuilt reads {replay.rebuilt_reads}",
            )
    except UnknownStudyError as exc:
        raise CliError(str(exc)) from None
    console.print(
        f"{len(replay.deliveries)} deliveries queued again"
        + (
            f"; result objects of {len(replay.rebuilt_reads)} read(s) to be built"
            if replay.rebuilt_reads
            else ""
        )
    )


def resolve_peer(settings: Settings, peer: str) -> tuple[str, int, str]:
    """(host, port, AE title) of a configured remote AE titled *peer*; a clear error otherwise."""
    from clinic.db import unit_of_work
    from clinic.network.service import find_ae

    with unit_of_work(_sessions(settings)) as session:
        ae = find_ae(session, peer)
        if ae is None:
            raise CliError(f"no remote AE titled {peer.strip()!r}: see `clinic dicom ae list`")
        return ae.host, ae.port, ae.ae_title


def register(
    dicom_app: typer.Typer,
    settings: Callable[[], Settings],
    session_factory: Callable[[Settings], sessionmaker[Session]],
) -> None:
    """Add ``ae``, ``deliveries``, ``build-failures`` and ``resend`` to the ``clinic dicom`` group."""
    _hooks["settings"] = settings
    _hooks["session_factory"] = session_factory
    dicom_app.add_typer(ae_app, name="ae")
    dicom_app.command("deliveries")(deliveries)
    dicom_app.command("build-failures")(build_failures)
    dicom_app.command("resend")(resend)
