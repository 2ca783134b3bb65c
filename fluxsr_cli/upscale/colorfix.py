"""Colour fix, applied once to the whole image, never per tile (docs/method.md section 7).

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

import math
from collections.abc import Callable

import torch

from fluxsr_cli.progress import ProgressFn, no_progress

METHODS = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5
WAVELET_REACH = sum(2**i for i in range(WAVELET_LEVELS))  # 31 px: how far the low band looks


class Scratch:
    """Scratch tensors reused from call to call, so a strip-by-strip fix allocates (almost) nothing.

    Freshly allocated temporaries of a few MB, freed strip after strip, fragment the C heap: the
    process's resident memory then grows far beyond what is live. ``get`` hands out views of one
    flat buffer per name, of at least ``min_numel`` elements (so buffers are not re-made as the
    shapes asked for grow), larger only when a larger shape is asked for.
    """

    def __init__(self, min_numel: int = 0) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.min_numel = min_numel

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n or buf.device != like.device or buf.dtype != like.dtype:
            buf = self.buffers[name] = torch.empty(max(n, self.min_numel), device=like.device, dtype=like.dtype)
        return buf[:n].view(shape)


def _shift_sum(x: torch.Tensor, d: int, dim: int, y: torch.Tensor) -> torch.Tensor:
    """``y[i] = x[i - d] + 2 x[i] + x[i + d]`` along ``dim``, indices clamped to the ends (replicate).

    No padded copy: the rows whose neighbours both exist are two shifted slices; the at most ``2 d``
    rows at the ends are gathered with clamped indices. ``y`` must not overlap ``x``.
    """
    n = x.shape[dim]
    core = max(0, n - 2 * d)  # rows d .. n - d - 1
    if core:
        torch.add(x.narrow(dim, 0, core), x.narrow(dim, 2 * d, core), out=y.narrow(dim, d, core))
    ends = [*range(min(d, n)), *range(d + core, n)]  # the indices outside the core rows
    if ends:
        i = torch.tensor(ends, device=x.device)
        near = x.index_select(dim, (i - d).clamp(min=0)).add_(x.index_select(dim, (i + d).clamp(max=n - 1)))
        y.index_copy_(dim, i, near)
    return y.add_(x, alpha=2)


def _blur(x: torch.Tensor, dilation: int, out: torch.Tensor | None = None, scratch: Scratch | None = None,
          scaled: bool = True) -> torch.Tensor:
    """3x3 binomial blur [1 2 1]/4 x [1 2 1]/4 with the given dilation, replicate padding: [B, C, H, W].

    Two separable passes of shifted adds (much faster on the CPU than a dilated conv), each left
    unnormalised ([1 2 1]); the factor 1/16 is a power of two, so applying it at the end (or, with
    ``scaled=False``, leaving it to the caller) gives the same bits. ``out`` (may be ``x`` itself)
    receives the result; ``scratch`` holds the intermediate.
    """
    scratch = scratch or Scratch()
    out = torch.empty_like(x) if out is None else out
    rows = _shift_sum(x, dilation, 2, scratch.get("rows", tuple(x.shape), x))  # x is not read after this
    _shift_sum(rows, dilation, 3, out)
    return out.mul_(1 / 16) if scaled else out


def wavelet_split(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with ``x == high + low``: low is the image blurred at every level in turn."""
    low = low_band(x, levels)
    return x - low, low


def low_band(x: torch.Tensor, levels: int = WAVELET_LEVELS, in_place: bool = False,
             scratch: Scratch | None = None) -> torch.Tensor:
    """The low band of :func:`wavelet_split` alone (computed in ``x`` itself if ``in_place``)."""
    scratch = scratch or Scratch()
    out = x if in_place else torch.empty_like(x)
    each = x.dtype == torch.float16  # 16**5 times the input would overflow float16: scale every level
    for i in range(levels):
        x = _blur(x, 2**i, out=out, scratch=scratch, scaled=each)
    return out if each else out.mul_(16.0**-levels)  # the blurs' factors at once (exact: a power of two)


def wavelet_fix(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High band of ``out`` + low band of ``reference`` (same shapes).

    The blur is linear, so ``out - low(out) + low(reference) == out + low(reference - out)``: one
    wavelet split instead of two (half the work), equal up to float rounding.
    """
    return low_band(reference - out, in_place=True).add_(out)  # (one buffer: the difference's)


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
                     strip: int = 128, clamp: bool = True, device: torch.device | None = None,
                     progress: ProgressFn = no_progress) -> torch.Tensor:
    """:func:`color_fix` in place on ``out`` [1, 3, H, W], one strip of rows at a time.

    ``reference(r0, r1)`` returns rows ``[r0, r1)`` of the reference [1, 3, r1 - r0, W], so the
    full-size reference never has to exist. The result equals :func:`color_fix` on whole tensors
    (to float rounding). Memory: a few strips of ``strip + 2 * 32`` rows. The wavelet work runs on
    ``device`` (default: ``out``'s), e.g. the GPU for an output buffer in CPU memory. ``progress``
    hears ("colour fix", rows done, height).
    """
    if method not in METHODS:
        raise ValueError(f"colour fix must be one of {', '.join(METHODS)}, got {method!r}")
    height = out.shape[2]
    if method == "none":
        return out.clamp_(0.0, 1.0) if clamp else out
    if method == "adain":
        return _adain_strips(out, reference, strip, clamp)
    progress("colour fix", 0, height)
    margin = WAVELET_REACH + 1
    strip = max(strip, margin)  # the carried rows must come from the previous strip only
    device = device or out.device
    b, c, _, w = out.shape
    scratch = Scratch(min_numel=b * c * min(height, strip + 2 * margin) * w)
    like = torch.empty(0, device=device, dtype=out.dtype)
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        lo, hi = max(0, r0 - margin), min(height, r1 + margin)
        window = scratch.get("window", (b, c, hi - lo, w), like)  # rows [lo, hi) of out, not yet fixed
        if r0 > lo:
            window[:, :, :r0 - lo].copy_(scratch.get("above", (b, c, r0 - lo, w), like))
        window[:, :, r0 - lo:].copy_(out[:, :, r0:hi])
        low = torch.sub(reference(lo, hi).to(device, out.dtype), window, out=scratch.get("low", window.shape, like))
        low_band(low, in_place=True, scratch=scratch)  # low band of (reference - out)
        fixed = low[:, :, r0 - lo:r1 - lo].add_(window[:, :, r0 - lo:r1 - lo])
        if r1 < height:  # the rows the next strip needs above it, before they are overwritten
            scratch.get("above", (b, c, margin, w), like).copy_(window[:, :, r1 - margin - lo:r1 - lo])
        out[:, :, r0:r1].copy_(fixed.clamp_(0.0, 1.0) if clamp else fixed)
        progress("colour fix", r1, height)
    return out


def _adain_strips(out: torch.Tensor, reference: Callable[[int, int], torch.Tensor], strip: int,
                  clamp: bool) -> torch.Tensor:
    """AdaIN in two passes over strips: float64 sums for the statistics, then the affine map."""
    height, count = out.shape[2], out.shape[2] * out.shape[3]
    sums = torch.zeros(4, out.shape[1], dtype=torch.float64)  # sum_o, sumsq_o, sum_r, sumsq_r
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        for k, x in enumerate((out[:, :, r0:r1], reference(r0, r1))):
            x = x.double()  # summed where it lies; only the sums come to the CPU
            sums[2 * k] += x.sum(dim=(0, 2, 3)).cpu()
            sums[2 * k + 1] += (x * x).sum(dim=(0, 2, 3)).cpu()
    mean = sums[0::2] / count
    std = (sums[1::2] / count - mean**2).clamp_min(0.0).sqrt()
    mean, std = mean.to(out.device), std.to(out.device)  # out may be on the GPU
    shape = (1, -1, 1, 1)
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        fixed = _adain_apply(out[:, :, r0:r1], mean[0].view(shape), std[0].view(shape),
                             mean[1].view(shape), std[1].view(shape))
        out[:, :, r0:r1] = fixed.clamp_(0.0, 1.0) if clamp else fixed
    return out
