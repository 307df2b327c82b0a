"""Grad-CAM (Selvaraju et al., ICCV 2017) for multi-label classifiers, one heatmap per output.

Own hooks rather than ``monai.visualize.GradCAM`` so that one forward pass serves the probabilities
and every finding's heatmap (one backward pass per finding), and so that the model's parameters can
stay frozen (gradients are taken with respect to the target layer's activation only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"no layer named {name!r} in {type(model).__name__}")
    layer: nn.Module = modules[name]
    return layer


def forward_with_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    output_indices: Sequence[int],
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Run ``model`` on a batch of one; return its logits and a [0, 1] heatmap per output index.

    Heatmaps are float32 at the spatial size of ``x`` (bilinear upsampling of the layer's map).
    """
    if x.shape[0] != 1:
        raise ValueError("Grad-CAM runs on one image at a time")
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # parameters are frozen; the graph hangs off the input
            logits = model(x)
            if not captured:
                raise RuntimeError("the Grad-CAM layer was not reached in the forward pass")
            act = captured[-1]
            maps: list[np.ndarray] = []
            for n, k in enumerate(output_indices):
                (grad,) = torch.autograd.grad(logits[0, k], act, retain_graph=n < len(output_indices) - 1)
                weights = grad.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((weights * act).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
                maps.append(_unit(cam[0, 0].detach().float().cpu().numpy()))
    finally:
        handle.remove()
    return logits.detach(), maps


def _unit(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    if peak <= 0.0 or not np.isfinite(peak):
        return np.zeros_like(cam, dtype=np.float32)
    return (cam / peak).astype(np.float32)
