"""The VAE in tiles, for images too large to encode or decode whole (docs/method.md section 7).

:func:`encode_tiled` and :func:`decode_tiled` run the VAE tile by tile and blend the
tiles (:mod:`fluxsr_cli.upscale.tiling`). A VAE normalises with GroupNorm, whose statistics are taken over
the whole input; per-tile statistics would give each tile its own tone and show as steps. So the
statistics are computed **once, globally**, in two passes: first the encoder (or decoder) runs over
non-overlapping tiles that cover the image and every GroupNorm's per-group sums are pooled over all
of them (:func:`record_group_norm`); then the overlapping tiles run with every GroupNorm normalising
by those pooled mean and variance (:func:`fixed_group_norm`). Every tile thus sees the same numbers;
they differ from a whole-image pass only through the per-tile statistics of the first pass, the
VAE's receptive field and its mid-block attention, which the overlap and the blend absorb. (A
small downscaled stand-in image is a cheaper source of statistics, but measurably worse.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from fluxsr_cli.model.latents import VAE_FACTOR
from fluxsr_cli.model.vae import StatsGroupNorm, decode, encode, install_stats_group_norms
from fluxsr_cli.progress import ProgressFn, no_progress
from fluxsr_cli.upscale.tiling import Source, tiled_apply

GroupNormStats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (mean [G], var [G]), fp32


# -- global GroupNorm statistics ---------------------------------------------------------------------
def _group_norms(module: torch.nn.Module) -> dict[str, StatsGroupNorm]:
    if isinstance(module, torch.nn.GroupNorm) and not isinstance(module, StatsGroupNorm):
        raise TypeError("a bare nn.GroupNorm cannot be given statistics; use StatsGroupNorm")
    return install_stats_group_norms(module)


def record_group_norm(module: torch.nn.Module, run: Callable[[], object]) -> GroupNormStats:
    """Call ``run()`` and record every GroupNorm's per-group mean and variance over all it saw.

    ``run`` may pass several images or tiles through ``module``: the statistics are pooled over all
    of them (float64 sums), as if they were one image. (The GroupNorms become
    :class:`~fluxsr_cli.model.vae.StatsGroupNorm`, which a compiled encoder or decoder runs compiled.)
    """
    norms = _group_norms(module)
    try:
        for gn in norms.values():
            gn.pooled.zero_()
            gn.mode = "record"
        run()
    finally:
        for gn in norms.values():
            gn.mode = "plain"
    stats: GroupNormStats = {}
    for name, gn in norms.items():
        count, total, squares = gn.pooled.cpu()
        mean = total / count
        stats[name] = (mean.float(), (squares / count - mean * mean).clamp_min(0.0).float())
    return stats


@contextmanager
def fixed_group_norm(module: torch.nn.Module, stats: GroupNormStats) -> Iterator[None]:
    """Within the block, every GroupNorm of ``module`` normalises with the recorded ``stats``."""
    norms = _group_norms(module)
    missing = sorted(set(norms) - set(stats))
    if missing:
        raise ValueError(f"no recorded statistics for GroupNorm {missing[0]}")
    try:
        for name, gn in norms.items():
            mean, var = stats[name]
            gn.mean.copy_(mean)
            gn.var.copy_(var)
            gn.mode = "fixed"
        yield
    finally:
        for gn in norms.values():
            gn.mode = "plain"


def stats_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """The size (multiples of 16 px, at most one tile) of a small stand-in for a large image."""
    f = min(1.0, tile / max(height, width))
    return max(16, round(height * f / 16) * 16), max(16, round(width * f / 16) * 16)


# -- tiled encode / decode -------------------------------------------------------------------------------
def _tiled_with_global_stats(part: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], source: Source,
                             grid: tuple[int, int], tile: int, overlap: int, blend: str, in_factor: int,
                             out_factor: int, out: torch.Tensor | None, progress: ProgressFn,
                             stage: str) -> torch.Tensor:
    """Two passes: pool the GroupNorm statistics over non-overlapping tiles, then blend tiles using them."""
    def stats_pass() -> None:
        tiled_apply(lambda x: fn(x)[:, :, :1, :1], source, grid, tile=tile, overlap=0, in_factor=in_factor,
                    out_factor=1, progress=progress, stage=f"{stage} statistics")

    stats = record_group_norm(part, stats_pass)
    with fixed_group_norm(part, stats):
        return tiled_apply(fn, source, grid, tile=tile, overlap=overlap, blend=blend, in_factor=in_factor,
                           out_factor=out_factor, out=out, progress=progress, stage=stage)


def encode_tiled(vae: torch.nn.Module, source: Source, size: tuple[int, int], *, tile: int, overlap: int,
                 blend: str = "cosine", progress: ProgressFn = no_progress) -> torch.Tensor:
    """Encode a [1, 3, H, W] image (a tensor, or a function box -> crop) in tiles of ``tile`` px.

    Returns the normalised latent [1, 16, H/8, W/8] (fp32, on the CPU). GroupNorm statistics are
    pooled over the whole image first (see the module docstring).
    """
    grid = (size[0] // VAE_FACTOR, size[1] // VAE_FACTOR)
    return _tiled_with_global_stats(vae.encoder, lambda x: encode(vae, x).cpu(), source, grid, tile // VAE_FACTOR,
                                    overlap // VAE_FACTOR, blend, VAE_FACTOR, 1, None, progress, "encode")


def decode_tiled(vae: torch.nn.Module, z: torch.Tensor, *, tile: int, overlap: int, blend: str = "cosine",
                 out: torch.Tensor | None = None, progress: ProgressFn = no_progress) -> torch.Tensor:
    """Decode a normalised latent [1, 16, h, w] in tiles of ``tile`` px into [1, 3, 8h, 8w] (fp32, CPU).

    GroupNorm statistics are pooled over the whole latent first. ``out``, when given, is a zeroed
    float32 buffer to blend into.
    """
    return _tiled_with_global_stats(vae.decoder, lambda t: decode(vae, t).cpu(), z, tuple(z.shape[-2:]),
                                    tile // VAE_FACTOR, overlap // VAE_FACTOR, blend, 1, VAE_FACTOR, out,
                                    progress, "decode")
