"""Model commands: train the synthetic demo bundle (with a progress bar), list bundles."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from clinic.settings import Settings
from clinicctl.errors import CliError
from clinicctl.output import progress_bar


def ensure_demo_models(settings: Settings, console: Console, *, force: bool = False, seed: int = 0) -> None:
    """Train the demo bundle into the models folder unless it is already there (seeded)."""
    from inference.demo.train import demo_bundle_exists, train_demo

    models_dir = settings.resolved_models_dir
    if demo_bundle_exists(models_dir) and not force:
        console.print(f"demo model present in {models_dir}")
        return
    models_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        "training the demo model on synthetic chest phantoms "
        "([italic]synthetic demo model — not for clinical use[/]); a few minutes on 2 CPU cores"
    )
    started = time.monotonic()
    with progress_bar(console) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        bundle = train_demo(models_dir, seed=seed, progress=report)
    console.print(f"demo model written to {bundle} in {time.monotonic() - started:.0f} s")


def list_models(settings: Settings, console: Console) -> None:
    from inference.registry import BundleError, ModelRegistry

    try:
        registry = ModelRegistry.from_directory(settings.resolved_models_dir, device="cpu")
    except BundleError as exc:
        raise CliError(str(exc)) from None
    table = Table(title=f"models in {settings.resolved_models_dir}")
    for column in ("id", "name", "version", "synthetic"):
        table.add_column(column)
    for model in registry.models:
        table.add_row(model.model_id, model.name, model.version, "yes" if model.is_synthetic else "no")
    console.print(table)
