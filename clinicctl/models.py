"""Model commands: train the synthetic demo bundles (with progress bars), list bundles."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from clinic.settings import Settings
from clinicctl.errors import CliError
from clinicctl.output import progress_bar

#: The demo bundles ``clinic models train-demo`` knows: name → (what it is, how long it trains).
DEMO_MODELS = {
    "cxr": ("chest radiograph classifier", "a few minutes"),
    "ct": ("CT lung-nodule segmenter", "about two minutes"),
}


def ensure_demo_models(
    settings: Settings, console: Console, *, force: bool = False, seed: int = 0, model: str = "all"
) -> None:
    """Train the demo bundle(s) into the models folder unless already there (seeded).

    *model* is ``cxr``, ``ct`` or ``all`` (both).
    """
    if model not in (*DEMO_MODELS, "all"):
        raise CliError(f"unknown demo model {model!r}: choose one of {', '.join([*DEMO_MODELS, 'all'])}")
    for name in DEMO_MODELS if model == "all" else (model,):
        _ensure_one(settings, console, name, force=force, seed=seed)


def _ensure_one(settings: Settings, console: Console, name: str, *, force: bool, seed: int) -> None:
    from inference.demo.ct_train import ct_bundle_exists, train_ct_demo
    from inference.demo.train import demo_bundle_exists, train_demo

    exists = ct_bundle_exists if name == "ct" else demo_bundle_exists
    train = train_ct_demo if name == "ct" else train_demo
    what, how_long = DEMO_MODELS[name]
    models_dir = settings.resolved_models_dir
    if exists(models_dir) and not force:
        console.print(f"demo {what} present in {models_dir}")
        return
    models_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"training the demo {what} on synthetic phantoms "
        f"([italic]synthetic demo model — not for clinical use[/]); {how_long} on 2 CPU cores"
    )
    started = time.monotonic()
    with progress_bar(console) as progress:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"{name}: {stage}", total=total)
            progress.update(tasks[stage], completed=done, total=total)

        bundle = train(models_dir, seed=seed, progress=report)
    console.print(f"demo model written to {bundle} in {time.monotonic() - started:.0f} s")


def list_models(settings: Settings, console: Console) -> None:
    from inference.registry import BundleError, ModelRegistry

    try:
        registry = ModelRegistry.from_directory(settings.resolved_models_dir, device="cpu")
    except BundleError as exc:
        raise CliError(str(exc)) from None
    table = Table(title=f"models in {settings.resolved_models_dir}")
    for column in ("id", "name", "version", "reads", "synthetic"):
        table.add_column(column)
    for model in registry.models:
        routing = model.routing
        reads = "/".join(routing.modalities) + (
            f" {'/'.join(routing.body_parts)}" if routing.body_parts else ""
        )
        reads += " series (3D)" if model.is_volumetric else " image"
        table.add_row(model.model_id, model.name, model.version, reads, "yes" if model.is_synthetic else "no")
    console.print(table)
