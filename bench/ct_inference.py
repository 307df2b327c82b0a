"""Sliding-window inference of the CT lung-nodule demo model on a benchmark-size series.

A 512 × 512 × 120 chest phantom (0.7 mm pixels, 2.5 mm slices) is written as a CT series, then read
the way the worker reads it, stage by stage:

- load: ``load_volume`` of the 120 DICOM files (decode, Modality LUT, ordering, checks);
- prepare: resampling to the working grid (2.5 × 1.4 × 1.4 mm) and the HU window;
- forward: MONAI ``sliding_window_inference`` with ``sw_batch_size`` 1 and 2, split into the
  network's own calls and the rest (patch extraction, Gaussian blending);
- postprocess: resampling the probability back to 512², threshold, connected components, the
  lung-field rule, measurements.

The total is load + prepare + forward (the bundle's ``sw_batch_size``) + postprocess; the share
outside the network's forward pass is everything but the network's calls.

Usage: .venv/bin/python bench/ct_inference.py [--repeat 3] [--device cpu|cuda|all]
(models from var/models or CLINIC_MODELS_DIR; ``all`` adds CUDA when one is present)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def median_seconds(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    samples, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--slices", type=int, default=120)
    args = parser.parse_args()

    import numpy as np
    import torch

    from inference.demo.ct_phantoms import BENCHMARK_SPACING, synth_ct
    from inference.demo.ct_train import CT_MODEL_ID
    from inference.dicom_io import load_volume
    from inference.registry import ModelRegistry
    from inference.segmentation import SegmentationModel
    from integrations.dicom.synthetic import build_ct_series, write_dataset

    models_dir = Path(os.environ.get("CLINIC_MODELS_DIR", ROOT / "var" / "models"))
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices {devices}")

    started = time.perf_counter()
    phantom = synth_ct(
        np.random.default_rng(2024),
        shape=(args.slices, 512, 512),
        spacing=BENCHMARK_SPACING,
        nodule_diameters_mm=[20.0, 12.0, 8.0, 6.0],
    )
    print(f"phantom {phantom.shape} generated in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory(prefix="ct-bench-") as tmp:
        datasets = build_ct_series(
            phantom.volume, phantom.spacing, patient_id="BENCH", patient_name="BENCH^CT"
        )
        paths = [write_dataset(ds, Path(tmp) / f"{k:04d}.dcm") for k, ds in enumerate(datasets)]
        load_s, volume = median_seconds(lambda: load_volume(paths), args.repeat)
    print(f"load_volume: {len(paths)} files in {load_s:.2f} s")

    for device in devices:
        model = ModelRegistry.from_directory(models_dir, device=device).get(CT_MODEL_ID)
        assert isinstance(model, SegmentationModel)
        run_device(model, volume, load_s, args.repeat)


def run_device(model: Any, volume: Any, load_s: float, repeat: int) -> None:
    import torch

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    net = model.network
    spent = {"net": 0.0}

    def timed_net(x: torch.Tensor) -> torch.Tensor:
        sync()
        start = time.perf_counter()
        out = net(x)
        sync()
        spent["net"] += time.perf_counter() - start
        return out

    model.predict_volume(volume)  # warm-up (allocations, cuDNN choices)

    def prepare() -> torch.Tensor:
        x = model.prepare(volume)
        sync()
        return x

    prepare_s, x = median_seconds(prepare, repeat)
    grid = tuple(x.shape[2:])
    print(f"\n[{model.device}] working grid {grid} (from {volume.hu.shape}), prepare {prepare_s:.2f} s")
    forward: dict[int, tuple[float, float]] = {}
    for sw in (1, 2):
        nets: list[float] = []

        def run(sw: int = sw, nets: list[float] = nets) -> Any:
            spent["net"] = 0.0
            prob = model.forward(x, sw_batch_size=sw, predictor=timed_net)
            sync()
            nets.append(spent["net"])
            return prob

        seconds, prob = median_seconds(run, repeat)
        forward[sw] = (seconds, statistics.median(nets))
        print(f"  sliding window sw_batch_size={sw}: {seconds:.2f} s (network calls {forward[sw][1]:.2f} s)")
    post_s, out = median_seconds(lambda: model.postprocess(prob, volume, x), repeat)
    print(f"  postprocess: {post_s:.2f} s ({len(out.components)} components)")
    sw = model.volume_spec.sliding_window.sw_batch_size
    total = load_s + prepare_s + forward[sw][0] + post_s
    outside = total - forward[sw][1]
    print(
        f"  total (load + prepare + forward sw_batch_size={sw} + postprocess): {total:.2f} s; "
        f"outside the network's forward pass {outside:.2f} s ({100 * outside / total:.0f} %)"
    )
    print(f"  sw_batch_size 2 vs 1: {forward[1][0] / forward[2][0]:.2f}x faster")


if __name__ == "__main__":
    main()
