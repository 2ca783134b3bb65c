"""Where the models live and how big a tile may be: offload, compile, memory estimates, OOM retry.

- ``--offload none``: both models on the device.
- ``--offload model``: accelerate's ``cpu_offload_with_hook`` on each model; each one moves to the
  GPU when called and pushes the other back to the CPU (the transformer's 24 GB and the VAE never
  share the GPU).
- ``--offload sequential``: accelerate's ``cpu_offload`` on the transformer (weights stream in layer
  by layer; slow, for the smallest GPUs); the small VAE is model-offloaded, so its GroupNorm layers
  stay plain modules that tiled decoding can give global statistics (:mod:`fluxsr_cli.model.vae`).
- ``--compile``: ``torch.compile`` of the transformer and of the VAE's encoder and decoder, in
  place. Every tile of an image has one shape; the first shape compiles static, a second one
  (another image size) recompiles once with dynamic sizes, and later sizes reuse that (PyTorch's
  automatic dynamic shapes). The tiled VAE runs eagerly (:func:`fluxsr_cli.model.vae.eager`).

The transformer's attention runs through PyTorch's SDPA (diffusers' default FLUX processor); the
VAE's single 512-wide head through :mod:`fluxsr_cli.model.attention` on CUDA.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from fluxsr_cli.errors import ResourceError

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


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: its accelerate hook's execution device, else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", [])]:
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return next(module.parameters()).device


def place_models(transformer: torch.nn.Module, vae: torch.nn.Module, device: torch.device, options: Any) -> None:
    """Move (or hook) the transformer and VAE for ``options.offload`` and compile if ``options.compile``."""
    offload = getattr(options, "offload", "none")
    if offload == "none":
        transformer.to(device)
        vae.to(device)
    else:
        from accelerate import cpu_offload, cpu_offload_with_hook

        if offload == "model":
            _, transformer_hook = cpu_offload_with_hook(transformer, device)
            _, vae_hook = cpu_offload_with_hook(vae, device, prev_module_hook=transformer_hook)
            transformer_hook.hook.prev_module_hook = vae_hook  # each pushes the other off the GPU
        elif offload == "sequential":
            cpu_offload(transformer, device)
            cpu_offload_with_hook(vae, device)
        else:
            raise ValueError(f"offload must be none, model or sequential, got {offload!r}")
    from fluxsr_cli.model.attention import use_blockwise_attention

    compile_models = bool(getattr(options, "compile", False))
    # the VAE's single 512-wide attention head: plain matmuls on CUDA, in a loop that runs eagerly
    # between the compiled graphs (fluxsr_cli.model.attention); with --compile its softmax is compiled too
    use_blockwise_attention(vae, compile_softmax=compile_models)
    if compile_models:
        # PyTorch's automatic dynamic shapes: the first shape compiles static; a second shape (another
        # image size in a batch, or the last, smaller group of --tile-batch) recompiles once with
        # dynamic sizes, and later shapes reuse that. dynamic=False recompiled for every image size.
        transformer.compile(dynamic=None)
        # the VAE's encoder and decoder too (its offload hook, if any, sits on the whole VAE, outside):
        # measured on an H200 at 1024 px, encode + decode 129 ms -> 48 ms. The tiled VAE runs them
        # eagerly (vae.eager): its GroupNorm hooks and patches are Python.
        vae.encoder.compile(dynamic=None)
        vae.decoder.compile(dynamic=None)


def free_memory() -> None:
    """Drop what Python and the CUDA caching allocator hold."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
              batch: int = 1, text_tokens: int = 512) -> int:
    """``--tile auto``: the largest tile (<= 2048 px) whose estimated transformer + VAE peak fits."""
    free = free_bytes(device)
    if free is None:
        return DEFAULT_TILE
    for tile in AUTO_TILES:
        need = max(transformer_bytes(transformer, tile, batch, itemsize, text_tokens),
                   vae_bytes(vae, tile, tile, itemsize))
        if need <= GPU_FREE_FRACTION * free:
            return tile
    return MIN_TILE


def retry_on_oom(run: Callable[[int, int], T], tile: int, notice: Callable[[str], None] = lambda m: None,
                 minimum: int = MIN_TILE) -> T:
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
