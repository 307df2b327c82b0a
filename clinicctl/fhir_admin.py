"""``clinic fhir``: the FHIR push queue (issue 5 item 6): what was pushed to ``fhir_push_url``,
its status, attempts and last error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session, sessionmaker

from clinic.settings import Settings
from clinicctl.errors import CliError

console = Console()
fhir_app = typer.Typer(help="FHIR: the push queue to an external FHIR server.", no_args_is_help=True)

#: Set by :func:`register`: the CLI's settings and session factory (``clinicctl.main``).
_hooks: dict[str, Callable[..., Any]] = {}
STATUS_STYLE = {"pending": "yellow", "sent": "green", "failed": "bold red"}


def register(
    app: typer.Typer,
    settings: Callable[[], Settings],
    session_factory: Callable[[Settings], sessionmaker[Session]],
) -> None:
    """Add the ``clinic fhir`` group to *app*."""
    _hooks["settings"] = settings
    _hooks["session_factory"] = session_factory
    app.add_typer(fhir_app, name="fhir")


@fhir_app.command("outbound")
def outbound(
    status: Annotated[str | None, typer.Option(help="pending, sent or failed.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show (newest first).")] = 50,
) -> None:
    """Resources pushed to the external FHIR server: status, attempts, last HTTP status, error."""
    from clinic.db import unit_of_work
    from clinic.fhirpush.models import PushStatus
    from clinic.fhirpush.service import attempts_of, list_pushes

    if status is not None and status not in {s.value for s in PushStatus}:
        raise CliError(f"unknown status {status!r}: choose one of {', '.join(s.value for s in PushStatus)}")
    settings = _hooks["settings"]()
    table = Table("id", "created", "resource", "url", "status", "attempts", "HTTP", "last error")
    with unit_of_work(_hooks["session_factory"](settings)) as session:
        for row in list_pushes(session, status, limit=limit):
            attempts = attempts_of(session, row.id)
            http = attempts[-1].http_status if attempts else None
            table.add_row(
                str(row.id),
                row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                f"{row.resource_type}/{row.resource_id}",
                row.url,
                Text(row.status, style=STATUS_STYLE.get(row.status, "")),
                str(row.attempts),
                str(http) if http is not None else "-",
                row.last_error[:120],
            )
    console.print(table)
