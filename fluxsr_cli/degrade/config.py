"""Settings of the Real-ESRGAN second-order degradation (defaults as Real-ESRGAN publishes them).

One :class:`StageConfig` describes a blur -> resize -> noise -> JPEG stage; the pipeline runs it
twice (stage 1 and stage 2 differ only in their values), and stage 2's JPEG is applied in the final
step, in random order with [resize to HR/scale + sinc filter]. See docs/method.md section 6.

Read from TOML with ``load_config(DegradeConfig, path, "degrade")``; ``configs/degrade_realesrgan.toml``
writes every default out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from fluxsr_cli.errors import ConfigError

KernelKind = Literal["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
ResizeMode = Literal["area", "bilinear", "bicubic"]

KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
KINDS: tuple[KernelKind, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} = {p} is not a probability; use a value in [0, 1]")


def _check_range(name: str, r: tuple[float, float], low: float = 0.0, high: float = math.inf,
                 low_open: bool = False) -> None:
    lo, hi = r
    too_low = lo <= low if low_open else lo < low
    if lo > hi or too_low or hi > high:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
        raise ConfigError(f"{name} = {list(r)} must be [low, high] with low <= high, both {bound}")


def _check_probs(name: str, probs: tuple[float, ...], n: int) -> None:
    if len(probs) != n or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ConfigError(f"{name} = {list(probs)} must be {n} non-negative probabilities that sum to 1")


def _check_sizes(name: str, sizes: tuple[int, ...]) -> None:
    if not sizes or any(s < 1 or s % 2 == 0 for s in sizes):
        raise ConfigError(f"{name} = {list(sizes)} must be a non-empty list of odd kernel sizes")


def _check_choices(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in allowed]
    if not values or bad or len(set(values)) != len(values):
        raise ConfigError(f"{name} = {list(values)} must list distinct values from {', '.join(allowed)}")


@dataclass(frozen=True)
class StageConfig:
    """One degradation stage: blur, random resize, Gaussian or Poisson noise, JPEG quality range.

    The defaults are Real-ESRGAN's first stage. ``beta`` ranges use the convention of
    :mod:`fluxsr_cli.degrade.kernels` (exponent on the distance; 2 = Gaussian), i.e. twice
    Real-ESRGAN's numbers (generalized 0.5-4 -> 1-8, plateau 1-2 -> 2-4): the same kernels.
    """

    blur_prob: float = 1.0  # chance that the stage blurs at all
    kernel_sizes: tuple[int, ...] = KERNEL_SIZES  # drawn uniformly
    kernel_kinds: tuple[KernelKind, ...] = KINDS
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1  # a 2-D sinc kernel instead of the kinds above
    sinc_omega_range: tuple[float, float] = (math.pi / 5, math.pi)  # cutoff, radians per pixel
    sinc_small_omega_min: float = math.pi / 3  # lower cutoff bound for kernels under 13 px
    sigma_range: tuple[float, float] = (0.2, 3.0)  # kernel standard deviations, pixels
    rotation_range: tuple[float, float] = (-math.pi, math.pi)  # anisotropic kernels, radians
    betag_range: tuple[float, float] = (1.0, 8.0)  # generalized Gaussian shape; half the draws below 2
    betap_range: tuple[float, float] = (2.0, 4.0)  # plateau shape; half the draws below 2
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)  # scale factor: up in [1, high], down in [low, 1]
    resize_modes: tuple[ResizeMode, ...] = RESIZE_MODES  # drawn uniformly
    gaussian_noise_prob: float = 0.5  # else Poisson noise
    noise_sigma_range: tuple[float, float] = (1.0, 30.0)  # Gaussian sigma in 8-bit levels (of 255)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4  # the same noise in every channel
    jpeg_range: tuple[int, int] = (30, 95)  # JPEG quality, drawn uniformly (integers)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            _check_prob(name, getattr(self, name))
        _check_sizes("kernel_sizes", self.kernel_sizes)
        _check_choices("kernel_kinds", self.kernel_kinds, KINDS)
        _check_probs("kernel_probs", self.kernel_probs, len(self.kernel_kinds))
        _check_range("sinc_omega_range", self.sinc_omega_range, 0.0, math.pi, low_open=True)
        if not 0 < self.sinc_small_omega_min <= self.sinc_omega_range[1]:
            raise ConfigError(f"sinc_small_omega_min = {self.sinc_small_omega_min} must be in (0, "
                              f"sinc_omega_range high = {self.sinc_omega_range[1]}]")
        _check_range("sigma_range", self.sigma_range, 0.0, low_open=True)
        _check_range("rotation_range", self.rotation_range, -math.inf)
        _check_range("betag_range", self.betag_range, 0.0, low_open=True)
        _check_range("betap_range", self.betap_range, 0.0, low_open=True)
        _check_probs("resize_probs", self.resize_probs, 3)
        _check_range("resize_range", self.resize_range, 0.0, low_open=True)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise ConfigError(f"resize_range = {list(self.resize_range)} must contain 1 (down below, up above)")
        _check_choices("resize_modes", self.resize_modes, RESIZE_MODES)
        _check_range("noise_sigma_range", self.noise_sigma_range, 0.0)
        _check_range("poisson_scale_range", self.poisson_scale_range, 0.0)
        _check_range("jpeg_range", self.jpeg_range, 1, 100)


def _stage2() -> StageConfig:
    """Real-ESRGAN's second stage: lighter blur, sometimes none, smaller noise."""
    return StageConfig(
        blur_prob=0.8,
        sigma_range=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass(frozen=True)
class DegradeConfig:
    """The whole second-order degradation: stage 1, stage 2, then the final step.

    Stage 1 resizes relative to the HQ size, stage 2 relative to the LR size (HQ / scale). The
    final step resizes to HQ / scale with a random mode and filters with a sinc kernel
    (``final_sinc_prob``, else no filter); it runs before or after stage 2's JPEG, half the time each.
    """

    scale: int = 4
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=_stage2)
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = KERNEL_SIZES
    final_sinc_omega_range: tuple[float, float] = (math.pi / 3, math.pi)
    final_resize_modes: tuple[ResizeMode, ...] = RESIZE_MODES
    jpeg_first_prob: float = 0.5  # chance that stage 2's JPEG comes before the final resize + sinc

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ConfigError(f"scale = {self.scale!r} must be a positive integer (4 for x4)")
        for name in ("stage1", "stage2"):
            if not isinstance(getattr(self, name), StageConfig):
                raise ConfigError(f"{name} must be a StageConfig table")
        _check_prob("final_sinc_prob", self.final_sinc_prob)
        _check_prob("jpeg_first_prob", self.jpeg_first_prob)
        _check_sizes("final_sinc_sizes", self.final_sinc_sizes)
        _check_range("final_sinc_omega_range", self.final_sinc_omega_range, 0.0, math.pi, low_open=True)
        _check_choices("final_resize_modes", self.final_resize_modes, RESIZE_MODES)

    def replace(self, **changes: object) -> DegradeConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
