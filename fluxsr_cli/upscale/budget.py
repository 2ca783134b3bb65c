"""The memory budget of an upscale, in one place: tile sizes, what is kept whole, out-of-memory retries.

Estimates, not measurements: :func:`transformer_bytes` and :func:`vae_bytes` scale with the tile's
tokens and pixels (factors measured on an H200); :func:`auto_tile` picks the largest tile whose
estimate fits the free GPU memory; :func:`plan_tiled` decides, for one image, whether the VAE runs
whole or in tiles and whether the bicubic upscale is kept whole or remade in bands; and
:func:`retry_on_oom` halves the tile when CUDA runs out of memory anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from fluxsr_cli.errors import ResourceError
from fluxsr_cli.model.placement import free_memory
from fluxsr_cli.progress import Notice, no_notice

T = TypeVar("T")

DEFAULT_TILE = 1024  # output px
MIN_TILE = 256  # the OOM retry stops halving here
MAX_AUTO_TILE = 2048  # FLUX.1 was trained up to about 2 MP; larger tiles leave its training range
AUTO_TILES = (2048, 1536, 1280, 1024, 768, 512, 256)
TOKEN_WIDTHS = 40  # live activation bytes per image token ~ TOKEN_WIDTHS * d_model * itemsize
# live activation bytes per pixel ~ VAE_WIDTHS * first VAE width * itemsize; measured on an H200, a
# whole 4096 px FLUX VAE pass peaked at 38 GiB over the weights (9.5 widths of 128 bf16 channels)
VAE_WIDTHS = 10
CPU_VAE_BUDGET = 512 * 2**20  # bytes: a larger estimated VAE peak on the CPU is tiled
GPU_FREE_FRACTION = 0.8  # of the free GPU memory that estimates may plan to use
KEEP_BICUBIC_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}  # the whole bicubic upscale is kept up to this
COLOR_STRIP_BYTES = 16 * 2**20  # float32 bytes of one colour-fix strip (each strip re-reads 64 margin rows)


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (plus what PyTorch has cached), or None for other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def transformer_bytes(transformer: torch.nn.Module, tile: int, batch: int, itemsize: int, text_tokens: int) -> int:
    """Estimated activation bytes of one transformer call on ``batch`` tiles of ``tile`` px."""
    cfg = transformer.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    tokens = (tile // 16) ** 2 + text_tokens
    return batch * tokens * TOKEN_WIDTHS * width * itemsize


def vae_bytes(vae: torch.nn.Module, height: int, width: int, itemsize: int) -> int:
    """Estimated peak activation bytes of decoding a ``height`` x ``width`` px image whole."""
    return height * width * vae.config.block_out_channels[0] * VAE_WIDTHS * itemsize


def vae_fits(vae: torch.nn.Module, height: int, width: int, device: torch.device, itemsize: int) -> bool:
    """Whether the VAE can run on the whole image: the free GPU memory, or a fixed CPU budget."""
    free = free_bytes(device)
    budget = CPU_VAE_BUDGET if free is None else GPU_FREE_FRACTION * free
    return vae_bytes(vae, height, width, itemsize) <= budget


def vae_tile(vae: torch.nn.Module, tile: int, device: torch.device, itemsize: int) -> int:
    """Tile for a VAE that must be tiled: ``tile``, halved while its estimated peak exceeds half the budget.

    (Half, so the tiled peak stays well under what a whole-image pass was allowed, leaving room for
    the output buffer: memory does not grow with the image.)
    """
    free = free_bytes(device)
    budget = CPU_VAE_BUDGET if free is None else GPU_FREE_FRACTION * free
    while tile > MIN_TILE and vae_bytes(vae, tile, tile, itemsize) > budget / 2:
        tile = tile // 2 // 16 * 16
    return max(tile, MIN_TILE)


def auto_tile(transformer: torch.nn.Module, vae: torch.nn.Module, device: torch.device, itemsize: int,
              batch: int = 1, text_tokens: int = 512, reserve: int = 0) -> int:
    """``--tile auto``: the largest tile (<= 2048 px) whose estimated transformer + VAE peak fits.

    The free memory already counts the weights that stay on the device (quantized or not);
    ``reserve`` is what an offloaded transformer brings in during its call.
    """
    free = free_bytes(device)
    if free is None:
        return DEFAULT_TILE
    for tile in AUTO_TILES:
        need = max(transformer_bytes(transformer, tile, batch, itemsize, text_tokens) + reserve,
                   vae_bytes(vae, tile, tile, itemsize))
        if need <= GPU_FREE_FRACTION * free:
            return tile
    return MIN_TILE


def retry_on_oom(run: Callable[[int, int], T], tile: int, notice: Notice = no_notice, minimum: int = MIN_TILE) -> T:
    """``run(tile, attempt)``; on CUDA out-of-memory free the cache, halve the tile, say so, retry.

    Below ``minimum`` the error is raised as a :class:`ResourceError` that names the remedies.
    """
    attempt = 0
    while True:
        try:
            return run(tile, attempt)
        except torch.OutOfMemoryError as error:  # leave the except block so its frames can be freed
            message = str(error).splitlines()[0] if str(error) else "out of memory"
        free_memory()
        smaller = tile // 2 // 16 * 16
        if smaller < minimum:
            raise ResourceError(f"out of memory even with --tile {tile} ({message}); use --offload model "
                                "or --offload sequential, --tile-space pixel, or a larger GPU")
        notice(f"out of memory with --tile {tile}; freed the cache and retrying with --tile {smaller}")
        tile, attempt = smaller, attempt + 1


@dataclass(frozen=True)
class TiledPlan:
    """How one tiled upscale spends memory (all sizes in output pixels or bytes)."""

    bicubic_bytes: int  # budget of the bicubic source the encoder reads: the whole upscale is made once up to this
    keep_bicubic: bool  # the whole upscale is kept through the colour fix (else remade there in strips)
    vae_whole: bool  # encode and decode the whole image at once (else in tiles with global GroupNorm statistics)
    vae_tile: int
    vae_overlap: int
    color_strip: int  # rows per colour-fix strip


def plan_tiled(vae: torch.nn.Module, size: tuple[int, int], width: int, tile: int, overlap: int, *, tile_space: str,
               vae_tile_option: str, device: torch.device, itemsize: int, retried: bool = False) -> TiledPlan:
    """The budget of a tiled upscale of a padded ``size`` (px; ``width``: the output's own) with ``tile`` px tiles.

    Bicubic: the whole padded upscale is kept while it fits :data:`KEEP_BICUBIC_BYTES`. On the CPU
    the encoder may also hold it when larger (it is no larger than the float32 output buffer that
    the decoder fills later, so making it once instead of 2-3 times in overlapping bands does not
    raise the peak), then drops it before the decode. VAE (``--vae-tile auto``): whole when the
    estimate fits the free memory, else the largest tile that does; ``--vae-tile N``: tiles of N px
    whenever the image is larger. After an out-of-memory retry (``retried``) never whole, and tiles
    no larger than the transformer's.
    """
    whole_bytes = size[0] * size[1] * 3 * 4
    keep_bytes = KEEP_BICUBIC_BYTES.get(device.type, KEEP_BICUBIC_BYTES["cuda"])
    bicubic_bytes = keep_bytes
    if tile_space == "latent" and device.type == "cpu":
        bicubic_bytes = max(keep_bytes, whole_bytes)
    if vae_tile_option == "auto":
        whole = not retried and vae_fits(vae, *size, device, itemsize)
        tile_px = vae_tile(vae, tile, device, itemsize)
    else:
        tile_px = min(int(vae_tile_option), tile) if retried else int(vae_tile_option)
        whole = max(size) <= tile_px
    # a quarter of the VAE tile: with global GroupNorm statistics more overlap changes little
    # (measured: the tile size, i.e. the reach of the mid-block attention, decides the error)
    vae_overlap = min(overlap, tile_px // 4 // 16 * 16)
    strip = max(128, min(1024, COLOR_STRIP_BYTES // (width * 3 * 4)))
    return TiledPlan(bicubic_bytes, whole_bytes <= keep_bytes, whole, tile_px, vae_overlap, strip)
