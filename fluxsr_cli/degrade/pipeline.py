"""The Real-ESRGAN second-order degradation: HQ images in, realistic LR images out.

    stage 1:  blur -> resize (relative to HQ) -> noise -> JPEG
    stage 2:  blur (sometimes) -> resize (relative to HQ / scale) -> noise
    final:    in random order, [resize to HQ / scale + sinc filter (sometimes)] and [JPEG]
    then clamp and round to 8-bit levels.

Drawing and applying are separate: :func:`draw_degradation` turns a config and a CPU
``torch.Generator`` into a :class:`Degradation` (every random choice for one image, a frozen
record that :meth:`Degradation.to_dict` makes JSON-able), and :func:`apply_degradation` runs it.
Noise fields are drawn from the same generator while applying. :func:`degrade` does both for a
batch, with its own draws for every image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fluxsr_cli.degrade import ops
from fluxsr_cli.degrade.config import DegradeConfig, StageConfig
from fluxsr_cli.degrade.kernels import make_kernel
from fluxsr_cli.errors import InputError


@dataclass(frozen=True)
class KernelDraw:
    """One drawn blur kernel; fields a kind does not use are None."""

    kind: str  # iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso, sinc
    size: int
    sigma_x: float | None = None
    sigma_y: float | None = None
    theta: float | None = None
    beta: float | None = None
    omega_c: float | None = None

    def kernel(self) -> Tensor:
        """The kernel, ``[size, size]`` float64."""
        return make_kernel(self.kind, self.size, self.sigma_x, self.sigma_y, self.theta, self.beta, self.omega_c)


@dataclass(frozen=True)
class StageDraw:
    """Everything one stage drew for one image."""

    blur: KernelDraw | None  # None: this stage does not blur
    resize: str  # up, down or keep
    resize_scale: float  # relative to the stage's reference size
    resize_mode: str
    noise: str  # gaussian or poisson
    noise_sigma: float | None  # Gaussian sigma in 8-bit levels (of 255)
    poisson_scale: float | None
    gray_noise: bool
    jpeg_quality: int


@dataclass(frozen=True)
class FinalDraw:
    """The final step: resize mode, optional sinc kernel, and the order against stage 2's JPEG."""

    jpeg_first: bool
    resize_mode: str
    sinc: KernelDraw | None  # None: no final filter


@dataclass(frozen=True)
class Degradation:
    """Every random choice made for one image."""

    stage1: StageDraw
    stage2: StageDraw
    final: FinalDraw

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts of numbers, strings and booleans (JSON-able).

        Fields a draw does not use are left out; ``blur`` and ``sinc`` stay, as None when skipped.
        """

        def plain(items: list[tuple[str, Any]]) -> dict[str, Any]:
            return {k: v for k, v in items if v is not None or k in ("blur", "sinc")}

        return dataclasses.asdict(self, dict_factory=plain)


# ----------------------------------------------------------------------------- drawing


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()


def _choice(g: torch.Generator, options: Sequence[Any], probs: Sequence[float] | None = None) -> Any:
    """One of ``options`` (uniform unless ``probs`` are given)."""
    u = _uniform(g, 0.0, 1.0)
    weights = probs if probs is not None else [1.0 / len(options)] * len(options)
    total = 0.0
    for option, p in zip(options, weights, strict=True):
        total += p
        if u < total:
            return option
    return next(o for o, p in zip(reversed(options), reversed(weights), strict=True) if p > 0)


def _split_uniform(g: torch.Generator, r: tuple[float, float], split: float = 2.0) -> float:
    """Half the draws in [low, m], half in [m, high], m = ``split`` clipped to the range.

    Real-ESRGAN's rule for shape parameters: as many peaky (beta < 2) as flat (beta > 2) kernels.
    """
    lo, hi = r
    m = min(max(split, lo), hi)
    return _uniform(g, lo, m) if _uniform(g, 0.0, 1.0) < 0.5 else _uniform(g, m, hi)


def draw_kernel(stage: StageConfig, g: torch.Generator) -> KernelDraw:
    """A blur kernel as Real-ESRGAN draws it: a sinc (``sinc_prob``) or one of the kinds."""
    size = _choice(g, stage.kernel_sizes)
    if _uniform(g, 0.0, 1.0) < stage.sinc_prob:
        lo, hi = stage.sinc_omega_range
        if size < 13:  # small sinc kernels ring less with a higher cutoff
            lo = max(lo, min(stage.sinc_small_omega_min, hi))
        return KernelDraw("sinc", size, omega_c=_uniform(g, lo, hi))
    kind = _choice(g, stage.kernel_kinds, stage.kernel_probs)
    sigma_x = _uniform(g, *stage.sigma_range)
    sigma_y = theta = beta = None
    if kind.endswith("aniso"):
        sigma_y = _uniform(g, *stage.sigma_range)
        theta = _uniform(g, *stage.rotation_range)
    if kind.startswith("generalized"):
        beta = _split_uniform(g, stage.betag_range)
    elif kind.startswith("plateau"):
        beta = _split_uniform(g, stage.betap_range)
    return KernelDraw(kind, size, sigma_x, sigma_y, theta, beta)


def draw_stage(stage: StageConfig, g: torch.Generator) -> StageDraw:
    """Blur kernel (or none), resize, noise and JPEG quality for one image."""
    blur = draw_kernel(stage, g) if _uniform(g, 0.0, 1.0) < stage.blur_prob else None
    lo, hi = stage.resize_range
    direction = _choice(g, ("up", "down", "keep"), stage.resize_probs)
    if direction == "up":
        resize_scale = _uniform(g, 1.0, hi)
    elif direction == "down":
        resize_scale = _uniform(g, lo, 1.0)
    else:
        resize_scale = 1.0
    resize_mode = _choice(g, stage.resize_modes)
    gaussian = _uniform(g, 0.0, 1.0) < stage.gaussian_noise_prob
    level = _uniform(g, *(stage.noise_sigma_range if gaussian else stage.poisson_scale_range))
    gray = _uniform(g, 0.0, 1.0) < stage.gray_noise_prob
    q_lo, q_hi = stage.jpeg_range
    quality = min(q_lo + int(_uniform(g, 0.0, 1.0) * (q_hi - q_lo + 1)), q_hi)  # uniform integer
    return StageDraw(
        blur=blur,
        resize=direction,
        resize_scale=resize_scale,
        resize_mode=resize_mode,
        noise="gaussian" if gaussian else "poisson",
        noise_sigma=level if gaussian else None,
        poisson_scale=None if gaussian else level,
        gray_noise=gray,
        jpeg_quality=quality,
    )


def draw_final(config: DegradeConfig, g: torch.Generator) -> FinalDraw:
    """Order, resize mode and sinc kernel (or none) of the final step."""
    jpeg_first = _uniform(g, 0.0, 1.0) < config.jpeg_first_prob
    mode = _choice(g, config.final_resize_modes)
    sinc = None
    if _uniform(g, 0.0, 1.0) < config.final_sinc_prob:
        size = _choice(g, config.final_sinc_sizes)
        sinc = KernelDraw("sinc", size, omega_c=_uniform(g, *config.final_sinc_omega_range))
    return FinalDraw(jpeg_first=jpeg_first, resize_mode=mode, sinc=sinc)


def draw_degradation(config: DegradeConfig, g: torch.Generator) -> Degradation:
    """All random choices for one image (no noise fields: those are drawn when applying)."""
    return Degradation(draw_stage(config.stage1, g), draw_stage(config.stage2, g), draw_final(config, g))


# ----------------------------------------------------------------------------- applying


def _scaled(ref: tuple[float, float], s: float) -> tuple[int, int]:
    return max(1, int(ref[0] * s)), max(1, int(ref[1] * s))


def apply_stage(x: Tensor, d: StageDraw, ref_size: tuple[float, float], g: torch.Generator) -> Tensor:
    """Blur, resize to ``ref_size * d.resize_scale``, add noise (clamped to [0, 1]); no JPEG here."""
    if d.blur is not None:
        x = ops.blur(x, d.blur.kernel())
    x = ops.resize(x, _scaled(ref_size, d.resize_scale), d.resize_mode)
    if d.noise == "gaussian":
        assert d.noise_sigma is not None
        return ops.add_gaussian_noise(x, d.noise_sigma / 255.0, d.gray_noise, g)
    assert d.poisson_scale is not None
    return ops.add_poisson_noise(x, d.poisson_scale, d.gray_noise, g)


def _resize_sinc(x: Tensor, d: FinalDraw, lq_size: tuple[int, int]) -> Tensor:
    x = ops.resize(x, lq_size, d.resize_mode)
    return ops.blur(x, d.sinc.kernel()) if d.sinc is not None else x


def apply_degradation(hq: Tensor, d: Degradation, scale: int, g: torch.Generator) -> Tensor:
    """Degrade one image ``[1, 3, H, W]`` in [0, 1] to ``[1, 3, H // scale, W // scale]`` on 8-bit levels."""
    h, w = hq.shape[-2:]
    lq_size = (h // scale, w // scale)
    x = apply_stage(hq, d.stage1, (h, w), g)
    x = ops.jpeg(x, d.stage1.jpeg_quality)
    x = apply_stage(x, d.stage2, (h / scale, w / scale), g)
    if d.final.jpeg_first:
        x = _resize_sinc(ops.jpeg(x, d.stage2.jpeg_quality), d.final, lq_size)
    else:
        x = ops.jpeg(_resize_sinc(x, d.final, lq_size), d.stage2.jpeg_quality)
    return ops.quantize(x)


def degrade(hq: Tensor, config: DegradeConfig, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
    """Degrade a batch ``[B, 3, H, W]`` in [0, 1] into ``[B, 3, H // s, W // s]``, s = ``config.scale``.

    Every image gets its own draws; the parameters are returned per image as plain dicts. The
    generator must live on the CPU (draws are device-independent); the images may be on any device.
    The same generator state gives the same bytes (on the same device).
    """
    if generator.device.type != "cpu":
        raise InputError(f"degrade: the generator is on {generator.device}; draw on the CPU (torch.Generator())")
    if hq.dim() != 4 or hq.shape[1] != 3 or not hq.is_floating_point():
        raise InputError(f"degrade: expected float RGB images [B, 3, H, W], got {tuple(hq.shape)} {hq.dtype}")
    s = config.scale
    if hq.shape[-2] < s or hq.shape[-1] < s:
        raise InputError(f"degrade: images {tuple(hq.shape[-2:])} are smaller than the scale {s}; use larger images")
    lo, hi = hq.aminmax()
    if not (torch.isfinite(lo) and torch.isfinite(hi) and lo >= -1e-3 and hi <= 1 + 1e-3):
        raise InputError(f"degrade: values span [{lo.item():.3g}, {hi.item():.3g}]; scale images to [0, 1]")
    x = hq.float().clamp(0, 1)
    draws = [draw_degradation(config, generator) for _ in range(x.shape[0])]
    lq = torch.cat([apply_degradation(x[i : i + 1], d, s, generator) for i, d in enumerate(draws)])
    return lq, [d.to_dict() for d in draws]
