"""LPIPS v0.1 (AlexNet and VGG16 backbones) and the TV-LPIPS loss of docs/method.md section 5, in plain torch.

LPIPS(a, b) = sum_l mean_hw || w_l * (f_l(a) / |f_l(a)| - f_l(b) / |f_l(b)|) ||^2
with f_l five ReLU activations of the scaled input (``backbones.py``) and w_l the LPIPS v0.1 linear
heads (``lin{l}.model.1.weight`` in ``lpips/weights/v0.1/{alex,vgg}.pth`` of
richzhang/PerceptualSimilarity). The backbones load torchvision's published ImageNet state dicts.

``net="alex"`` is the LPIPS the one-step SR papers report (pyiqa's default ``lpips``); ``net="vgg"``
is pyiqa's ``lpips-vgg`` and the one TV-LPIPS trains with (METHOD.md). Weights are fetched once into
the weights folder of ``weights.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fluxsr_cli.errors import CheckpointError, InputError
from fluxsr_cli.quality.backbones import AlexNetFeatures, VGG16Features
from fluxsr_cli.quality.weights import ELSEWHERE, WeightFile, load_weight_files

_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"
VGG16_FILE = VGG16Features.weights.name
LPIPS_HEADS_FILE = "lpips_v0.1_vgg.pth"
LPIPS_ALEX_HEADS_FILE = "lpips_v0.1_alex.pth"
# net -> (torchvision backbone, LPIPS v0.1 heads)
WEIGHTS: dict[str, tuple[WeightFile, WeightFile]] = {
    "vgg": (VGG16Features.weights, WeightFile(LPIPS_HEADS_FILE, _HEADS_URL.format(net="vgg"))),
    "alex": (AlexNetFeatures.weights, WeightFile(LPIPS_ALEX_HEADS_FILE, _HEADS_URL.format(net="alex"))),
}
_BACKBONES = {"vgg": VGG16Features, "alex": AlexNetFeatures}
# LPIPS' ScalingLayer: inputs in [-1, 1] are shifted and scaled to the ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _unit_channels(f: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """f / ||f|| over channels. The eps sits inside the root, so the gradient stays finite at f = 0."""
    return f * torch.rsqrt(f.square().sum(dim=1, keepdim=True) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 on ``net`` ("vgg" or "alex"); ``forward(a, b)`` takes images in [0, 1] -> [B] distances."""

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        if net not in _BACKBONES:
            raise InputError(f"unknown LPIPS backbone {net!r}; choose from {', '.join(_BACKBONES)}")
        self.net_name = net
        self.net = _BACKBONES[net]()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self.net.channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: [B, 3, H, W] in [0, 1] (H, W >= 16 for VGG, 31 for AlexNet) -> [B]."""
        _check_pair(a, b, self.net.min_side, self.net_name)
        x = torch.cat([a, b]).float()
        x = ((2 * x - 1) - self.shift) / self.scale  # [0, 1] -> [-1, 1] -> ImageNet-scaled
        n = a.shape[0]
        total = x.new_zeros(n)
        for f, lin in zip(self.net(x), self.lins, strict=True):
            d = (_unit_channels(f[:n]) - _unit_channels(f[n:])).square()  # [B, C_l, h, w]
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total

    def load_weights(self, backbone: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> None:
        """Load torchvision's state dict of the backbone (classifier keys ignored) and the LPIPS v0.1 heads."""
        features = {k: v for k, v in backbone.items() if k.startswith("features.")}
        self.net.load_state_dict(features, strict=True)
        self.lins.load_state_dict(_heads_from_lpips(heads, len(self.lins), self.net_name), strict=True)


def _heads_from_lpips(heads: dict[str, torch.Tensor], n: int, net: str) -> dict[str, torch.Tensor]:
    """``lin{i}.model.1.weight`` (LPIPS' Dropout + Conv) -> ``{i}.weight`` of our ModuleList."""
    out = {}
    for i in range(n):
        key = f"lin{i}.model.1.weight"
        if key not in heads:
            raise CheckpointError(f"LPIPS heads: key {key} missing; the file is not LPIPS v0.1 {net}.pth")
        out[f"{i}.weight"] = heads[key]
    return out


def _check_pair(a: torch.Tensor, b: torch.Tensor, min_side: int, net: str) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise InputError(f"LPIPS needs two [B, 3, H, W] images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < min_side:
        raise InputError(f"LPIPS-{net} needs images of at least {min_side}x{min_side} px, got {tuple(a.shape[-2:])}")


def load_lpips_nets(
    nets: Sequence[str], device: torch.device | str | None = None, cache_dir: str | Path | None = None,
    elsewhere: str = ELSEWHERE,
) -> dict[str, LPIPS]:
    """net -> LPIPS with its published weights, frozen and in eval mode, on ``device`` (default CPU).

    All files of all ``nets`` are resolved together: what is missing is named in one error, which offers
    ``elsewhere`` as the other way out (by default: another weights folder).
    """
    unknown = [n for n in nets if n not in WEIGHTS]
    if unknown:
        raise InputError(f"unknown LPIPS backbone(s) {', '.join(unknown)}; choose from {', '.join(WEIGHTS)}")
    states = load_weight_files([f for n in nets for f in WEIGHTS[n]], cache_dir, "LPIPS weights", elsewhere)
    models = {}
    for n in nets:
        backbone, heads = WEIGHTS[n]
        model = LPIPS(n)
        model.load_weights(states[backbone.name], states[heads.name])
        models[n] = model.requires_grad_(False).eval().to(device or "cpu")
    return models


def load_lpips(device: torch.device | str | None = None, cache_dir: str | Path | None = None, net: str = "vgg",
               elsewhere: str = ELSEWHERE) -> LPIPS:
    """LPIPS on ``net`` with its published weights, frozen and in eval mode, on ``device`` (default CPU)."""
    return load_lpips_nets((net,), device, cache_dir, elsewhere)[net]


def tv_map(x: torch.Tensor) -> torch.Tensor:
    """TV(x) = |d_h x| + |d_w x| per channel, halved into [0, 1] (the LPIPS input range).

    x: [B, C, H, W] in [0, 1] -> [B, C, H, W]; forward differences, zero on the last row / column.
    """
    d_h = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
    d_w = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1, 0, 0))
    return (d_h + d_w) / 2


def tv_lpips(lpips: LPIPS, a: torch.Tensor, b: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """TV-LPIPS(a, b) = LPIPS(a, b) + gamma * LPIPS(TV(a), TV(b)); a, b in [0, 1] -> [B]."""
    return lpips(a, b) + gamma * lpips(tv_map(a), tv_map(b))
