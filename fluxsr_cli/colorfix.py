"""Colour fix, applied once to the whole image, never per tile (METHOD.md section 7).

A one-step model keeps the detail it adds but can drift in colour and tone. The fix takes the low
frequencies from the reference (the bicubic upscale of the input) and the high frequencies from the
model output:

- ``wavelet``: a 5-level a-trous wavelet split (3x3 binomial blur, dilations 1, 2, 4, 8, 16,
  replicate padding); result = high band of the output + low band of the reference. A colour cast or
  a shifted mean lives entirely in the low band, so it is replaced exactly.
- ``adain``: per-channel mean and standard deviation of the output matched to the reference.

Images are [B, 3, H, W] float tensors. :func:`color_fix` works on whole tensors;
:func:`color_fix_strips` does the same in horizontal strips, in place, for images too large to copy
(the wavelet's reach is :data:`WAVELET_REACH` rows, so strips with that margin are exact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

METHODS = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5
WAVELET_REACH = sum(2**i for i in range(WAVELET_LEVELS))  # 31 px: how far the low band looks


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur [1 2 1]/4 x [1 2 1]/4 with the given dilation, replicate padding: [B, C, H, W].

    Written as two separable passes of shifted adds (much faster on the CPU than a dilated conv).
    """
    d = dilation
    p = F.pad(x, (0, 0, d, d), mode="replicate") if x.shape[2] > 0 else x
    y = (p[:, :, :-2 * d] + p[:, :, 2 * d:]).mul_(0.25).add_(p[:, :, d:-d], alpha=0.5)
    p = F.pad(y, (d, d, 0, 0), mode="replicate")
    return (p[..., :-2 * d] + p[..., 2 * d:]).mul_(0.25).add_(p[..., d:-d], alpha=0.5)


def wavelet_split(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with ``x == high + low``: low is the image blurred at every level in turn."""
    low = x
    for i in range(levels):
        low = _blur(low, 2**i)
    return x - low, low


def wavelet_fix(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High band of ``out`` + low band of ``reference`` (same shapes)."""
    high, _ = wavelet_split(out)
    _, low = wavelet_split(reference)
    return high + low


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel (mean, std) as float64 [B, C, 1, 1] (population std)."""
    x = x.double()
    mean = x.mean(dim=(2, 3), keepdim=True)
    return mean, ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()


def adain_fix(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``out`` with each channel's mean and std set to the reference's."""
    mean_o, std_o = channel_stats(out)
    mean_r, std_r = channel_stats(reference)
    return _adain_apply(out, mean_o, std_o, mean_r, std_r)


def _adain_apply(out: torch.Tensor, mean_o, std_o, mean_r, std_r) -> torch.Tensor:
    gain = std_r / std_o.clamp_min(1e-6)
    return (out * gain.to(out.dtype) + (mean_r - mean_o * gain).to(out.dtype)).to(out.dtype)


def color_fix(out: torch.Tensor, reference: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    """Fix ``out`` [B, 3, H, W] against ``reference`` (the bicubic upscale, same shape)."""
    if method not in METHODS:
        raise ValueError(f"colour fix must be one of {', '.join(METHODS)}, got {method!r}")
    if out.shape != reference.shape:
        raise ValueError(f"output {tuple(out.shape)} and reference {tuple(reference.shape)} differ in shape")
    reference = reference.to(out.device, out.dtype)
    if method == "wavelet":
        return wavelet_fix(out, reference)
    if method == "adain":
        return adain_fix(out, reference)
    return out


def color_fix_strips(out: torch.Tensor, reference: Callable[[int, int], torch.Tensor], method: str = "wavelet",
                     strip: int = 128, clamp: bool = True, device: torch.device | None = None) -> torch.Tensor:
    """:func:`color_fix` in place on ``out`` [1, 3, H, W], one strip of rows at a time.

    ``reference(r0, r1)`` returns rows ``[r0, r1)`` of the reference [1, 3, r1 - r0, W], so the
    full-size reference never has to exist. The result equals :func:`color_fix` on whole tensors
    (to float rounding). Memory: a few strips of ``strip + 2 * 32`` rows. The wavelet work runs on
    ``device`` (default: ``out``'s), e.g. the GPU for an output buffer in CPU memory.
    """
    if method not in METHODS:
        raise ValueError(f"colour fix must be one of {', '.join(METHODS)}, got {method!r}")
    height = out.shape[2]
    if method == "none":
        return out.clamp_(0.0, 1.0) if clamp else out
    if method == "adain":
        return _adain_strips(out, reference, strip, clamp)
    margin = WAVELET_REACH + 1
    strip = max(strip, margin)  # the carried rows must come from the previous strip only
    above = None  # the unfixed rows [r0 - margin, r0) that the previous strip has overwritten
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        lo, hi = max(0, r0 - margin), min(height, r1 + margin)
        below = out[:, :, r0:hi]
        window = below if above is None else torch.cat([above, below], dim=2)  # rows [lo, hi), unfixed
        device = device or out.device
        fixed = wavelet_fix(window.to(device), reference(lo, hi).to(device, out.dtype))[:, :, r0 - lo:r1 - lo]
        above = out[:, :, max(0, r1 - margin):r1].clone()
        out[:, :, r0:r1] = (fixed.clamp_(0.0, 1.0) if clamp else fixed).to(out.device)
    return out


def _adain_strips(out: torch.Tensor, reference: Callable[[int, int], torch.Tensor], strip: int,
                  clamp: bool) -> torch.Tensor:
    """AdaIN in two passes over strips: float64 sums for the statistics, then the affine map."""
    height, count = out.shape[2], out.shape[2] * out.shape[3]
    sums = torch.zeros(4, out.shape[1], dtype=torch.float64)  # sum_o, sumsq_o, sum_r, sumsq_r
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        for k, x in enumerate((out[:, :, r0:r1], reference(r0, r1))):
            x = x.double().cpu()
            sums[2 * k] += x.sum(dim=(0, 2, 3))
            sums[2 * k + 1] += (x * x).sum(dim=(0, 2, 3))
    mean = sums[0::2] / count
    std = (sums[1::2] / count - mean**2).clamp_min(0.0).sqrt()
    shape = (1, -1, 1, 1)
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        fixed = _adain_apply(out[:, :, r0:r1], mean[0].view(shape), std[0].view(shape),
                             mean[1].view(shape), std[1].view(shape))
        out[:, :, r0:r1] = fixed.clamp_(0.0, 1.0) if clamp else fixed
    return out
