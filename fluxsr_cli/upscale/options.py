"""The two sets of upscale settings: what is fixed when the model loads, and what each image may choose.

A loaded model (:class:`~fluxsr_cli.upscale.restore.Upscaler`) serves any number of images, each
with its own :class:`UpscaleOptions`; a server that keeps one model loaded changes those per
request. :class:`ModelOptions` decide which weights are loaded and how they are placed.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxsr_cli.errors import ConfigError
from fluxsr_cli.model.checkpoint import DEFAULT_MODEL
from fluxsr_cli.model.loading import DTYPES
from fluxsr_cli.model.placement import OFFLOADS
from fluxsr_cli.model.quantize import check_settings
from fluxsr_cli.upscale.colorfix import METHODS as COLOR_FIXES
from fluxsr_cli.upscale.tiling import BLENDS

TILE_SPACES = ("latent", "pixel")


def _pixels(value: str) -> bool:
    """A tile size in output pixels: a multiple of 16, at least 128."""
    return str(value).isdigit() and int(value) >= 128 and int(value) % 16 == 0


@dataclass(frozen=True)
class ModelOptions:
    """Fixed when the model is loaded: which weights, on which device, in what precision, placed how."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    base: str | None = None  # None: the checkpoint's (FLUX.1-dev); a folder, repo id or .safetensors/.gguf file
    base_revision: str | None = None
    vae: str | None = None  # None: the base's vae/; or ae.safetensors, a vae/ folder, a repo id
    offline: bool = False
    device: str | None = None  # None: CUDA when available, else refuse the full model on CPU
    dtype: str | None = None  # None: bf16 on GPU, fp32 on CPU
    t_l: float | None = None  # None: the checkpoint's
    guidance: float | None = None  # None: the checkpoint's
    offload: str = "none"
    compile: bool = False
    quantize: str = "none"  # none, fp8, fp8-compute or nf4 (fluxsr_cli.model.quantize)
    cache: str | None = None  # folder of quantized transformers; None: fluxsr_cli.model.quantize.cache_root()

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.t_l is not None and not 0.0 < self.t_l < 1.0:
            raise ConfigError(f"--t-l must lie in (0, 1), got {self.t_l}")
        if self.offload not in OFFLOADS:
            raise ConfigError(f"--offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")
        check_settings(self.quantize, self.offload)


@dataclass(frozen=True)
class UpscaleOptions:
    """Chosen per image: the scale, how it is tiled, and the colour fix.

    There is no seed: nothing in the one-step restore is random (the VAE posterior's mean, one
    deterministic transformer pass), so the same image and options always give the same output.
    """

    scale: int = 4
    tile: str = "1024"  # output pixels per tile, or "auto"
    overlap: int | None = None  # output pixels; None: 25 % of the tile, at least 128
    blend: str = "cosine"
    tile_batch: int = 1
    tile_space: str = "latent"
    vae_tile: str = "auto"  # "auto": whole when it fits, else tiled; or output pixels per VAE tile
    color_fix: str = "wavelet"

    def __post_init__(self) -> None:
        if not 1 <= self.scale <= 8:
            raise ConfigError(f"--scale must be 1-8, got {self.scale}")
        if self.color_fix not in COLOR_FIXES:
            raise ConfigError(f"--color-fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if self.tile != "auto" and not _pixels(self.tile):
            raise ConfigError(f"--tile must be 'auto' or output pixels, a multiple of 16 and >= 128, got {self.tile!r}")
        if self.overlap is not None and not 0 <= self.overlap <= (int(self.tile) // 2 if self.tile != "auto" else 1024):
            raise ConfigError(f"--overlap must lie between 0 and half of --tile ({self.tile}), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ConfigError(f"--blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if self.tile_batch < 1:
            raise ConfigError(f"--tile-batch must be at least 1, got {self.tile_batch}")
        if self.vae_tile != "auto" and not _pixels(self.vae_tile):
            raise ConfigError(f"--vae-tile must be 'auto' or output pixels, a multiple of 16 and >= 128, "
                              f"got {self.vae_tile!r}")
        if self.tile_space not in TILE_SPACES:
            raise ConfigError(f"--tile-space must be one of {', '.join(TILE_SPACES)}, got {self.tile_space!r}")
