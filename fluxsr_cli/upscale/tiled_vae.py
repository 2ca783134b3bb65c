"""The VAE in tiles, for images too large to encode or decode whole (METHOD.md section 7).

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
from fluxsr_cli.model.vae import decode, encode
from fluxsr_cli.progress import ProgressFn, no_progress
from fluxsr_cli.upscale.tiling import Source, tiled_apply

GroupNormStats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (mean [G], var [G]), fp32


# -- global GroupNorm statistics ---------------------------------------------------------------------
@contextmanager
def eager() -> Iterator[None]:
    """A block in which modules compiled with ``--compile`` run eagerly (the tiled VAE's passes).

    The tiled VAE hooks and patches the GroupNorms for its two passes; that is Python that a compiled
    encoder or decoder would trace again and again. Compilation pays off for whole images only.
    (The stance is process-wide while the block runs.)
    """
    with torch.compiler.set_stance("force_eager"):
        yield


def _group_norms(module: torch.nn.Module) -> dict[str, torch.nn.GroupNorm]:
    return {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.GroupNorm)}


def record_group_norm(module: torch.nn.Module, run: Callable[[], object]) -> GroupNormStats:
    """Call ``run()`` and record every GroupNorm's per-group mean and variance over all it saw.

    ``run`` may pass several images or tiles through ``module``: the statistics are pooled over all
    of them (float64 sums), as if they were one image.
    """
    sums: dict[str, torch.Tensor] = {}  # name -> [3, G]: count, sum, sum of squares

    def hook(name: str, gn: torch.nn.GroupNorm):
        def record(_module, inputs, _output) -> None:
            x = inputs[0].detach()
            for image in x:  # per-image float32 statistics, pooled in float64 sums below
                flat = image.reshape(gn.num_groups, -1).float()
                if flat.device.type == "cpu":  # two passes: as exact as var_mean, many times faster there
                    mean = flat.mean(dim=1)
                    var = (flat - mean[:, None]).square_().mean(dim=1)
                else:  # no second full-size copy on the GPU
                    var, mean = torch.var_mean(flat, dim=1, unbiased=False)
                n = float(image.numel() // gn.num_groups)
                mean, var = mean.double().cpu(), var.double().cpu()
                acc = torch.stack([torch.full_like(mean, n), mean * n, (var + mean * mean) * n])
                sums[name] = sums[name] + acc if name in sums else acc
        return record

    handles = [gn.register_forward_hook(hook(name, gn)) for name, gn in _group_norms(module).items()]
    try:
        with eager():  # a compiled encoder or decoder would not run the hooks as Python
            run()
    finally:
        for handle in handles:
            handle.remove()
    stats: GroupNormStats = {}
    for name, (count, total, squares) in sums.items():
        mean = total / count
        stats[name] = (mean.float(), (squares / count - mean * mean).clamp_min(0.0).float())
    return stats


def _fixed_forward(gn: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> Callable:
    """A GroupNorm forward that normalises with the given per-group statistics instead of its input's.

    It is one per-channel affine map, ``x * scale + shift``; without autograd, scale and shift are
    made once per device and dtype (so the GroupNorm's weights must not change inside one
    :func:`fixed_group_norm` block; inference never changes them).
    """
    made: dict[tuple[torch.device, torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def affine(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per = x.shape[1] // gn.num_groups
        scale = torch.rsqrt(var.to(x.device) + gn.eps).repeat_interleave(per)  # [C]
        shift = -mean.to(x.device).repeat_interleave(per) * scale
        if gn.affine:
            scale, shift = scale * gn.weight.float(), shift * gn.weight.float() + gn.bias.float()
        view = (1, -1) + (1,) * (x.ndim - 2)
        return scale.view(view).to(x.dtype), shift.view(view).to(x.dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # under autograd nothing is kept: each call builds its own graph
            scale, shift = affine(x)
            return torch.addcmul(shift, x, scale)
        key = (x.device, x.dtype, x.ndim)
        if key not in made:
            made[key] = affine(x)
        scale, shift = made[key]
        return torch.addcmul(shift, x, scale)
    return forward


@contextmanager
def fixed_group_norm(module: torch.nn.Module, stats: GroupNormStats) -> Iterator[None]:
    """Within the block, every GroupNorm of ``module`` uses the recorded ``stats``."""
    norms = _group_norms(module)
    missing = sorted(set(norms) - set(stats))
    if missing:
        raise ValueError(f"no recorded statistics for GroupNorm {missing[0]}")
    saved = {name: gn.__dict__.get("forward") for name, gn in norms.items()}
    try:
        for name, gn in norms.items():
            gn.forward = _fixed_forward(gn, *stats[name])
        with eager():  # patched forwards in a compiled encoder or decoder would recompile per block
            yield
    finally:
        for name, gn in norms.items():
            if saved[name] is None:
                del gn.forward
            else:
                gn.forward = saved[name]


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
