"""Inference of the demo chest-radiograph model, side by side with MONAI's own Grad-CAM.

- the network's forward pass at the bundle's input size, eager contiguous vs channels_last;
- ``LoadedModel.predict`` without and with heatmaps (our one-forward Grad-CAM for both findings)
  against ``monai.visualize.GradCAM`` computing the same two maps on the same network and input;
- decoding the real chest radiograph of pydicom-data, uncompressed and JPEG 2000 (``load_image``).

Usage: .venv/bin/python bench/inference_cpu.py [--repeat 30]   (models from var/models or
CLINIC_MODELS_DIR; runs on CUDA instead with --device cuda when one is present)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    """Median wall time of *fn* in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch
    from monai.visualize import GradCAM
    from pydicom.data import get_testdata_file

    from inference.demo.phantoms import synth_chest
    from inference.dicom_io import load_image
    from inference.preprocess import preprocess
    from inference.registry import ModelRegistry
    from inference.types import ImageInput

    models_dir = Path(os.environ.get("CLINIC_MODELS_DIR", ROOT / "var" / "models"))
    model = ModelRegistry.from_directory(models_dir, device=args.device).get("cxr-demo")
    phantom = synth_chest(np.random.default_rng(3), consolidation=True, nodule=True)
    pixels = phantom.image.astype(np.float32) / float(phantom.image.max())
    image = ImageInput(pixels=pixels, modality="DX", body_part="CHEST", view_position="PA")
    net = model._net  # noqa: SLF001 - the benchmark times the bare network too
    x = torch.from_numpy(preprocess(pixels, model.spec.preprocessing))[None].to(model.device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    net_contig = net.to(memory_format=torch.contiguous_format)

    def forward(t: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return net(t)

        return run

    rows: list[tuple[str, float]] = []
    rows.append(("network forward, eager, contiguous", timed(forward(x), args.repeat)))
    net.to(memory_format=torch.channels_last)
    rows.append(("network forward, channels_last (used)", timed(forward(x_cl), args.repeat)))
    del net_contig
    rows.append(("predict, no heatmaps", timed(lambda: model.predict(image, explain=False), args.repeat)))
    ours = timed(lambda: model.predict(image, explain=True), args.repeat)
    rows.append(("predict + Grad-CAM for both findings (ours)", ours))
    cam = GradCAM(nn_module=net, target_layers=model.spec.gradcam_layer)

    # The bundle's weights are frozen; MONAI's CAM needs a graph, so the input carries the gradient.
    x_grad = x_cl.clone().requires_grad_(True)

    def monai_cam() -> object:
        return [cam(x_grad, class_idx=f.output_index) for f in model.spec.findings]

    reference = timed(monai_cam, args.repeat)
    rows.append(("monai.visualize.GradCAM, both findings (reference)", reference))
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = get_testdata_file(name)
        rows.append((f"load_image {name} (1955×1841)", timed(lambda p=path: load_image(p), 5, warmup=1)))

    size = model.spec.preprocessing
    print(f"\ncxr-demo {model.version} on {model.device}; input {size}; median of {args.repeat}\n")
    print("| step | ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    print(f"\nours / MONAI GradCAM (both maps, incl. preprocessing on our side): {ours / reference:.2f}")


if __name__ == "__main__":
    main()
