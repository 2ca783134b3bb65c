"""The image operations of the degradation: blur, resize, noise, JPEG, 8-bit rounding.

Images are float tensors ``[B, 3, H, W]`` in [0, 1] on any device. Per-sample settings (kernels,
noise levels, JPEG qualities) are given per image of the batch; a single value applies to all.
Random noise is drawn on the CPU from the given ``torch.Generator`` and then moved to the images'
device, so a seed gives the same noise on any device. JPEG runs a real encoder (OpenCV) on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RESIZE_MODES = ("area", "bilinear", "bicubic")
# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale (what Real-ESRGAN's grey noise uses)
LUMA = (0.299, 0.587, 0.114)


def _per_sample(value: float | Sequence[float] | Tensor, batch: int, like: Tensor) -> Tensor:
    """A scalar or one value per image as a ``[B, 1, 1, 1]`` tensor on ``like``'s device and dtype."""
    t = torch.as_tensor(value, dtype=like.dtype).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"expected 1 or {batch} values (one per image), got {t.numel()}")
    return t.reshape(batch, 1, 1, 1).to(like.device)


def _per_sample_bool(value: bool | Sequence[bool], batch: int) -> list[bool]:
    flags = [bool(value)] * batch if isinstance(value, bool) else [bool(v) for v in value]
    if len(flags) != batch:
        raise ValueError(f"expected 1 or {batch} flags (one per image), got {len(flags)}")
    return flags


def blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Filter each image with its own kernel; reflect padding keeps the borders' brightness.

    x: [B, C, H, W]; kernels: [B, k, k] (or [k, k] for all), odd k. Kernels smaller than the
    largest are zero-padded, which leaves their result unchanged. Falls back to replicate
    padding when the image is too small to reflect ``k // 2`` pixels.
    """
    b, c, h, w = x.shape
    if kernels.dim() == 2:
        kernels = kernels.expand(b, -1, -1)
    k = kernels.shape[-1]
    if kernels.shape != (b, k, k) or k % 2 == 0:
        raise ValueError(f"kernels must be [B, k, k] with odd k and B = {b}, got {tuple(kernels.shape)}")
    pad = k // 2
    mode = "reflect" if pad < h and pad < w else "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)  # [B, C, H + 2p, W + 2p]
    weight = kernels.to(x).repeat_interleave(c, dim=0).unsqueeze(1)  # [B*C, 1, k, k]
    out = F.conv2d(padded.reshape(1, b * c, h + 2 * pad, w + 2 * pad), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize to ``size`` = (height, width) with ``area``, ``bilinear`` or ``bicubic`` (no antialias)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    if tuple(size) == tuple(x.shape[-2:]):
        return x
    align = None if mode == "area" else False
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align)


def gaussian_noise(
    shape: Sequence[int], sigma: float | Sequence[float], gray: bool | Sequence[bool], generator: torch.Generator
) -> Tensor:
    """Zero-mean Gaussian noise ``[B, C, H, W]`` on the CPU; sigma is in image units ([0, 1] scale).

    Grey noise is one field copied to every channel (luminance noise); colour noise is independent
    per channel.
    """
    b, c, h, w = shape
    flags = _per_sample_bool(gray, b)
    noise = torch.empty((b, c, h, w))
    for i in range(b):
        noise[i] = torch.randn((1 if flags[i] else c, h, w), generator=generator).expand(c, h, w)
    return noise * _per_sample(sigma, b, noise)


def add_gaussian_noise(
    x: Tensor, sigma: float | Sequence[float], gray: bool | Sequence[bool], generator: torch.Generator
) -> Tensor:
    """``clamp(x + n, 0, 1)`` with ``n ~ N(0, sigma^2)``; sigma in image units (8-bit sigma / 255)."""
    noise = gaussian_noise(x.shape, sigma, gray, generator)
    return (x + noise.to(x)).clamp(0, 1)


def poisson_noise(x: Tensor, scale: float | Sequence[float], gray: bool | Sequence[bool],
                  generator: torch.Generator) -> Tensor:
    """Shot noise for images ``x`` (any device), returned on the CPU, as Real-ESRGAN makes it.

    The image (or its luma, for grey noise) is rounded to 8-bit levels; with ``n`` distinct levels in
    it, intensities are counted in units of ``1 / L``, ``L = 2^ceil(log2 n)``: ``noise = scale *
    (Poisson(L x) / L - x)``, so its variance ``scale^2 x / L`` grows with the brightness.
    """
    b, c, h, w = x.shape
    flags = _per_sample_bool(gray, b)
    img = x.detach().to("cpu", torch.float32)
    luma = (img * torch.tensor(LUMA).reshape(1, 3, 1, 1)).sum(1, keepdim=True) if c == 3 else img.mean(1, True)
    out = torch.empty_like(img)
    for i in range(b):
        base = quantize(luma[i] if flags[i] else img[i])  # [1 or C, H, W]
        levels = 2.0 ** torch.ceil(torch.log2(torch.tensor(float(torch.unique(base).numel()))))
        noisy = torch.poisson(base * levels, generator=generator) / levels
        out[i] = (noisy - base).expand(c, h, w)
    return out * _per_sample(scale, b, out)


def add_poisson_noise(x: Tensor, scale: float | Sequence[float], gray: bool | Sequence[bool],
                      generator: torch.Generator) -> Tensor:
    """``clamp(x + poisson_noise(x), 0, 1)``."""
    return (x + poisson_noise(x, scale, gray, generator).to(x)).clamp(0, 1)


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] floats to 8-bit levels (round half to even, then clamp), same shape, dtype uint8."""
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def quantize(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the nearest 8-bit level, staying float."""
    return (x * 255.0).round().clamp(0, 255) / 255.0


def jpeg(x: Tensor, quality: int | Sequence[int]) -> Tensor:
    """Encode and decode each RGB image as a baseline JPEG (4:2:0) at its quality (1-100).

    Runs OpenCV's libjpeg on the CPU; the result is back on ``x``'s device and dtype, on 8-bit levels.
    """
    import cv2
    import numpy as np

    b = x.shape[0]
    qualities = [int(quality)] * b if isinstance(quality, (int, float)) else [int(q) for q in quality]
    if len(qualities) != b:
        raise ValueError(f"expected 1 or {b} JPEG qualities, got {len(qualities)}")
    if x.shape[1] != 3:
        raise ValueError(f"JPEG needs RGB images [B, 3, H, W], got {tuple(x.shape)}")
    images = to_uint8(x.detach()).permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, 3] RGB
    out = []
    for img, q in zip(images, qualities, strict=True):
        if not 0 <= q <= 100:
            raise ValueError(f"JPEG quality must be in 0-100, got {q}")
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a JPEG")
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy())
    decoded = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)  # [B, 3, H, W] uint8
    return decoded.to(device=x.device, dtype=x.dtype) / 255.0
