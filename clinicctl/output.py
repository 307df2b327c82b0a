"""Rich tables for the terminal. Patient names appear only when asked for (``--names``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from clinic.ai.models import AnalysisJob
from clinic.imaging.models import ReceiveFailure
from clinic.radiology.service import WorklistRow

PRIORITY_STYLE = {0: "green", 1: "yellow", 2: "bold red"}


def worklist_table(rows: Sequence[WorklistRow], *, names: bool = False) -> Table:
    table = Table(title=f"Radiology worklist ({len(rows)} studies)", title_justify="left")
    table.add_column("Priority")
    table.add_column("Why")
    table.add_column("Patient")
    table.add_column("Accession")
    table.add_column("Study")
    table.add_column("Arrived (UTC)")
    table.add_column("Wait", justify="right")
    table.add_column("Status")
    table.add_column("AI findings · model · version")
    for row in rows:
        level = int(row.priority)
        patient = f"{row.patient_identifier} {row.patient_name}" if names else row.patient_identifier
        findings = Text()
        models: dict[tuple[str, str], str] = {}
        for finding in row.findings:
            style = "bold" if finding.positive else "dim"
            mark = "+" if finding.positive else "-"
            findings.append(f"{mark} {finding.label} {finding.probability:.2f}  ", style=style)
            models[(finding.model_name, finding.model_version)] = finding.disclaimer
        for (name, version), disclaimer in models.items():
            findings.append(f"\n{name} v{version}", style="cyan")
            if disclaimer:
                findings.append(f"\n{disclaimer}", style="italic")
        table.add_row(
            Text(row.priority.name, style=PRIORITY_STYLE.get(level, "")),
            row.priority_reason,
            patient,
            row.accession_number,
            f"{row.modality} {row.body_part or row.description}".strip(),
            row.arrived_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{row.waiting_minutes:.0f} min",
            str(row.status),
            findings if row.findings else Text("—", style="dim"),
        )
    return table


def failures_table(rows: Iterable[ReceiveFailure]) -> Table:
    table = Table(title="Refused objects", title_justify="left")
    for column in ("id", "at (UTC)", "channel", "calling AE", "SOP instance", "status", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.id),
            row.at.strftime("%Y-%m-%d %H:%M:%S"),
            row.channel,
            row.calling_ae,
            row.sop_instance_uid,
            f"0x{row.status_code:04X}",
            row.reason,
        )
    return table


def jobs_table(rows: Iterable[AnalysisJob]) -> Table:
    table = Table(title="Failed analysis jobs", title_justify="left")
    for column in ("job", "study id", "attempts", "finished (UTC)", "reason"):
        table.add_column(column)
    for job in rows:
        finished = job.finished_at.strftime("%Y-%m-%d %H:%M:%S") if job.finished_at else ""
        table.add_row(str(job.id), str(job.study_id), str(job.attempts), finished, job.error)
    return table


def progress_bar(console: Console) -> Progress:
    """The progress bar of long CLI work: what, how far, how long so far."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )
