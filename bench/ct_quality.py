"""Held-out quality of a CT nodule bundle: the sets the r3 recipe was chosen on.

    .venv/bin/python bench/ct_quality.py [MODELS_DIR ...]   (default: var/models)
    .venv/bin/python bench/ct_quality.py --train steps=3000 [--train n_train=20 ...]

For each models directory (e.g. ``var/models`` and a bundle trained elsewhere with another recipe)
it reads synthetic chest CTs at a scan's resolution (512 × 512 × 40, 0.7 mm pixels, 2.5 mm slices)
and prints, for the nodules of 8 mm and more: pooled Dice, mean, lowest (with the two weakest
nodules), how many were counted exactly once, and the false-positive components:

* ``test``: the held-out set of ``tests/inference/test_ct_model.py`` (seed 77 001, 8 nodules);
* ``more``: 6 more volumes (seed 31 337, 13 nodules of 8–20 mm);
* ``small``: the six chests without nodules or with small ones of the routine test (1.4 mm
  pixels), false positives only.

``--train KEY=VALUE`` first trains a bundle with those settings of ``CTTrainConfig`` changed (the
recipe's other settings, seed 0; ~90 s) into a temporary folder and evaluates that: how the
variants that r3 was chosen over were measured. Seeded: the same bundle gives the same figures;
training is reproducible on one machine, not across CPUs. The test's bounds are pooled ≥ 0.8, mean ≥ 0.8,
lowest ≥ 0.4, false positives ≤ 1.5 a small chest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.demo.ct_phantoms import synth_ct  # noqa: E402
from inference.demo.ct_train import CT_MODEL_ID, LARGE_MM, phantom_volume, score_volume  # noqa: E402
from inference.registry import ModelRegistry  # noqa: E402
from inference.segmentation import SegmentationModel  # noqa: E402

SHAPE, SPACING = (40, 512, 512), (2.5, 0.7, 0.7)
SETS = {
    "test": (77_001, ((20.0, 8.0, 6.0), (12.0, 10.0, 4.0), (15.0, 8.0))),
    "more": (31_337, ((20.0, 12.0, 8.0), (15.0, 10.0), (20.0, 8.0), (12.0, 15.0), (10.0, 20.0), (8.0, 15.0))),
}
SMALL = (77_002, ([], [6.0], [], [4.0, 6.0], [], [6.0]))


def large_nodules(
    model: SegmentationModel, seed: int, cases: tuple[tuple[float, ...], ...]
) -> dict[str, object]:
    large, false_positives = [], 0
    for diameters, child in zip(cases, np.random.SeedSequence(seed).spawn(len(cases)), strict=True):
        phantom = synth_ct(
            np.random.default_rng(child), shape=SHAPE, spacing=SPACING, nodule_diameters_mm=diameters
        )
        scores, fp = score_volume(model.predict_volume(phantom_volume(phantom)), phantom)
        false_positives += fp
        large += [s for s in scores if s.diameter_mm >= LARGE_MM]
    overlap = sum(s.overlap_voxels for s in large)
    pooled = 2 * overlap / sum(s.truth_voxels + s.predicted_voxels for s in large)
    weakest = sorted(
        (round(s.dice, 2), round(s.diameter_mm), "juxtapleural" if s.juxtapleural else "") for s in large
    )
    return {
        "pooled": round(pooled, 3),
        "mean": round(float(np.mean([s.dice for s in large])), 3),
        "lowest": weakest[:2],
        "counted once": f"{sum(s.components == 1 for s in large)}/{len(large)}",
        "false positives": false_positives,
    }


def small_chests(model: SegmentationModel) -> int:
    rng = np.random.default_rng(SMALL[0])
    false_positives = 0
    for diameters in SMALL[1]:
        phantom = synth_ct(rng, shape=(40, 256, 256), spacing=(2.5, 1.4, 1.4), nodule_diameters_mm=diameters)
        counted = {m.code: m.value for m in model.predict_volume(phantom_volume(phantom)).measurements}
        false_positives += max(0, int(counted["nodule_count"]) - len(diameters))
    return false_positives


def trained_variant(settings: list[str], folder: Path) -> Path:
    """A bundle trained with *settings* (``KEY=VALUE`` of :class:`CTTrainConfig`) in *folder*."""
    import ast
    import dataclasses

    from inference.demo.ct_train import CTTrainConfig, train_ct_demo

    changes = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        changes[key] = ast.literal_eval(value)
    config = dataclasses.replace(CTTrainConfig(), **changes)
    print(f"training with {changes} ...", flush=True)
    train_ct_demo(folder, config=config)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dirs", nargs="*", type=Path)
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    folders = list(args.models_dirs) or ([] if args.train else [ROOT / "var" / "models"])
    with tempfile.TemporaryDirectory(prefix="ct-variant-") as tmp:
        if args.train:
            folders.append(trained_variant(args.train, Path(tmp)))
        for folder in folders:
            report(folder)


def report(folder: Path) -> None:
    model = ModelRegistry.from_directory(folder, device="cpu").get(CT_MODEL_ID)
    assert isinstance(model, SegmentationModel)
    print(f"{folder} ({model.name} {model.version})")
    for name, (seed, cases) in SETS.items():
        print(f"  {name:5s} {large_nodules(model, seed, cases)}")
    print(f"  small false positives on {len(SMALL[1])} chests: {small_chests(model)}")


if __name__ == "__main__":
    main()
