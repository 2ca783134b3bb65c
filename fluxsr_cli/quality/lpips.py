"""LPIPS (v0.1, VGG16 backbone) and the TV-LPIPS loss of docs/method.md section 5, in plain torch.

The backbone is torchvision's VGG16 feature stack, written here so that torchvision is not needed:
its module names mirror torchvision's, so the published ImageNet state dict
``vgg16-397923af.pth`` loads key for key (``features.0.weight`` ... ``features.28.bias``). The five
linear heads are the LPIPS v0.1 weights (``lin0.model.1.weight`` ... ``lin4.model.1.weight`` in
``lpips/weights/v0.1/vgg.pth`` of richzhang/PerceptualSimilarity).

LPIPS(a, b) = sum_l mean_hw || w_l * (f_l(a) / |f_l(a)| - f_l(b) / |f_l(b)|) ||^2
with f_l the relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 activations of the scaled input.

Weights are resolved from a cache folder (default: torch hub's ``checkpoints`` folder, where
torchvision keeps the same VGG16 file) or downloaded once from their public URLs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fluxsr_cli.errors import CheckpointError, InputError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = "vgg16-397923af.pth"
LPIPS_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
LPIPS_HEADS_FILE = "lpips_v0.1_vgg.pth"

# torchvision's vgg16().features up to relu5_3: ints are 3x3 convs (out channels), "M" a 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in ``features`` of the ReLUs LPIPS reads: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_TAPS = (3, 8, 15, 22, 29)
_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS' ScalingLayer: inputs in [-1, 1] are shifted and scaled to the ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_MIN_SIDE = 16  # four 2x2 pools before relu5_3


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features[:30]``; ``forward`` returns the five LPIPS taps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)  # keys match torchvision: features.{0,2,5,...,28}.*

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)  # [B, C_l, H / 2^l, W / 2^l]
        return taps


def _unit_channels(f: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """f / ||f|| over channels. The eps sits inside the root, so the gradient stays finite at f = 0."""
    return f * torch.rsqrt(f.square().sum(dim=1, keepdim=True) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the VGG16 backbone; ``forward(a, b)`` takes images in [0, 1] -> [B] distances."""

    def __init__(self) -> None:
        super().__init__()
        self.net = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: [B, 3, H, W] in [0, 1] (H, W >= 16) -> [B]."""
        _check_pair(a, b)
        x = torch.cat([a, b]).float()
        x = ((2 * x - 1) - self.shift) / self.scale  # [0, 1] -> [-1, 1] -> ImageNet-scaled
        n = a.shape[0]
        total = x.new_zeros(n)
        for f, lin in zip(self.net(x), self.lins, strict=True):
            d = (_unit_channels(f[:n]) - _unit_channels(f[n:])).square()  # [B, C_l, h, w]
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total

    def load_weights(self, vgg16: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> None:
        """Load torchvision's VGG16 state dict (classifier keys ignored) and the LPIPS v0.1 heads."""
        features = {k: v for k, v in vgg16.items() if k.startswith("features.")}
        self.net.load_state_dict(features, strict=True)
        self.lins.load_state_dict(_heads_from_lpips(heads), strict=True)


def _heads_from_lpips(heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``lin{i}.model.1.weight`` (LPIPS' Dropout + Conv) -> ``{i}.weight`` of our ModuleList."""
    out = {}
    for i in range(len(_CHANNELS)):
        key = f"lin{i}.model.1.weight"
        if key not in heads:
            raise CheckpointError(f"LPIPS heads: key {key} missing; the file is not LPIPS v0.1 vgg.pth")
        out[f"{i}.weight"] = heads[key]
    return out


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise InputError(f"LPIPS needs two [B, 3, H, W] images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < _MIN_SIDE:
        raise InputError(f"LPIPS needs images of at least {_MIN_SIDE}x{_MIN_SIDE} px, got {tuple(a.shape[-2:])}")


def default_cache_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), shared with torchvision."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("FLUXSR_OFFLINE", "HF_HUB_OFFLINE"))


def _fetch_state_dict(url: str, file_name: str, cache_dir: Path, check_hash: bool) -> dict[str, torch.Tensor]:
    """The state dict in ``cache_dir/file_name``, downloaded from ``url`` first when absent."""
    path = cache_dir / file_name
    if not path.exists() and _offline():
        raise CheckpointError(f"LPIPS weights {path}: not cached and offline; download {url} to that path")
    try:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=str(cache_dir), map_location="cpu", file_name=file_name, check_hash=check_hash, progress=False
        )
    except Exception as e:  # URLError, HTTPError, hash mismatch, unreadable file: one line for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"LPIPS weights {path}: cannot load or download from {url} ({reason}); download it there by hand"
        ) from None


def load_lpips(device: torch.device | str | None = None, cache_dir: str | Path | None = None) -> LPIPS:
    """LPIPS-VGG with its published weights, frozen and in eval mode, on ``device`` (default CPU)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    vgg16 = _fetch_state_dict(VGG16_URL, VGG16_FILE, cache, check_hash=True)
    heads = _fetch_state_dict(LPIPS_HEADS_URL, LPIPS_HEADS_FILE, cache, check_hash=False)
    model = LPIPS()
    model.load_weights(vgg16, heads)
    model.requires_grad_(False).eval()
    return model.to(device or "cpu")


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
