"""DISTS (Ding et al., 2020: Deep Image Structure and Texture Similarity) in plain torch.

The backbone is torchvision's VGG16 (``backbones.py``, the same weight file as LPIPS-VGG) with its four
max-pools replaced by L2 pooling: sqrt(hanning-weighted 3x3 mean of x^2), stride 2. On the input
and the five stages' last ReLUs, per channel k and layer l, with means mu, variances s^2 and
covariance s_xy over the image:

    S1 = (2 mu_x mu_y + c) / (mu_x^2 + mu_y^2 + c)          (texture: the means agree)
    S2 = (2 s_xy + c) / (s_x^2 + s_y^2 + c)                   (structure: the maps correlate)
    DISTS = 1 - sum_lk (alpha_lk S1 + beta_lk S2) / sum (alpha + beta),   c = 1e-6

alpha and beta (1475 each) are the published ``weights.pt`` of dingkeyan93/DISTS (also shipped in the
``DISTS_pytorch`` wheel); its sha256 starts f5e65c96, the digits in the name pyiqa gives its DISTS
weights, ``DISTS_weights-f5e65c96.pth``, which we keep.
No resizing: images are scored at their size, as pyiqa's ``dists`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fluxsr_cli.errors import CheckpointError, InputError
from fluxsr_cli.quality.backbones import VGG16Features
from fluxsr_cli.quality.weights import WeightFile

DISTS_FILE = "DISTS_weights-f5e65c96.pth"
# (torchvision's VGG16, alpha/beta); the VGG16 file is the one LPIPS-VGG reads
DISTS_WEIGHTS = (
    VGG16Features.weights,
    WeightFile(DISTS_FILE, "https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt", check_hash=True),
)
_CHANNELS = (3, 64, 128, 256, 512, 512)  # the input, then relu1_2 ... relu5_3
_POOLS = (4, 9, 16, 23)  # VGG16's max-pools in ``features``
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_C = 1e-6


class L2Pool(nn.Module):
    """sqrt(blur(x^2)) with the 3x3 filter outer(h, h) / sum, h = hanning(5)[1:-1] = (0.5, 1, 0.5); stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        h = torch.tensor([0.5, 1.0, 0.5])
        g = torch.outer(h, h) / torch.outer(h, h).sum()
        self.register_buffer("filter", g.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, ceil(H / 2), ceil(W / 2)]
        out = F.conv2d(x.square(), self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS with its published weights loaded by ``load_weights``; ``forward(a, b)``: [0, 1] images -> [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = VGG16Features()
        for i, c in zip(_POOLS, _CHANNELS[1:5], strict=True):
            self.net.features[i] = L2Pool(c)  # no parameters: torchvision's keys still load
        self.register_buffer("alpha", torch.full((1, sum(_CHANNELS), 1, 1), 0.5 / sum(_CHANNELS)))
        self.register_buffer("beta", torch.full((1, sum(_CHANNELS), 1, 1), 0.5 / sum(_CHANNELS)))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: [B, 3, H, W] in [0, 1] -> [B]."""
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise InputError(f"DISTS needs two [B, 3, H, W] images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        x = torch.cat([a, b]).float()
        feats = [x, *self.net((x - self.mean) / self.std)]  # the raw input counts as a layer
        n = a.shape[0]
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, _CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, _CHANNELS, dim=1)
        total = x.new_zeros(n)
        for f, alpha, beta in zip(feats, alphas, betas, strict=True):
            fx, fy = f[:n], f[n:]
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)  # [B, C, 1, 1]
            vx, vy = (fx - mx).square().mean((2, 3), keepdim=True), (fy - my).square().mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            s1 = (2 * mx * my + _C) / (mx.square() + my.square() + _C)
            s2 = (2 * cov + _C) / (vx + vy + _C)
            total = total + (alpha * s1 + beta * s2).sum(dim=(1, 2, 3))
        return 1 - total

    def load_weights(self, vgg16: dict[str, torch.Tensor], alpha_beta: dict[str, torch.Tensor]) -> None:
        """torchvision's VGG16 state dict (classifier keys ignored) and the published ``alpha``/``beta``."""
        self.net.load_state_dict({k: v for k, v in vgg16.items() if k.startswith("features.")}, strict=True)
        for key in ("alpha", "beta"):
            value = alpha_beta.get(key)
            if value is None or value.numel() != sum(_CHANNELS):
                raise CheckpointError(f"DISTS weights: {key} missing or not {sum(_CHANNELS)} values; "
                                      f"the file is not DISTS' weights.pt ({DISTS_FILE})")
            getattr(self, key).copy_(value.reshape(1, -1, 1, 1))
