"""Where the models live: on the device, behind accelerate's offload hooks, and compiled or not.

- ``offload="none"``: both models on the device.
- ``offload="model"``: accelerate's ``cpu_offload_with_hook`` on each model; each one moves to the
  GPU when called and pushes the other back to the CPU (the transformer's 24 GB and the VAE never
  share the GPU).
- ``offload="sequential"``: accelerate's ``cpu_offload`` on the transformer (weights stream in layer
  by layer; slow, for the smallest GPUs); the small VAE is model-offloaded, so its GroupNorm layers
  stay plain modules that tiled decoding can give global statistics (:mod:`fluxsr_cli.upscale.tiled_vae`).
- ``offload="group"``: diffusers' group offloading of the transformer, a block at a time, with the
  next block's weights copied on a CUDA stream while the current one computes (pinned host memory);
  the VAE stays on the device (diffusers' hooks live in ``forward``, where the tiled VAE patches
  GroupNorms, and accelerate's ``execution_device`` does not know them).
- A quantized transformer (``--quantize``) arrives on the device already and is not moved.
- ``compile=True``: ``torch.compile`` of the transformer and of the VAE's encoder and decoder, in
  place. Every tile of an image has one shape; the first shape compiles static, a second one
  (another image size) recompiles once with dynamic sizes, and later sizes reuse that (PyTorch's
  automatic dynamic shapes). The VAE's GroupNorms become :class:`~fluxsr_cli.model.vae.StatsGroupNorm`
  first, so that the tiled VAE's passes (statistics, then tiles) run compiled too.

The transformer's attention runs through PyTorch's SDPA (diffusers' default FLUX processor); the
VAE's single 512-wide head through :mod:`fluxsr_cli.model.attention` on CUDA.
"""

from __future__ import annotations

import gc

import torch

OFFLOADS = ("none", "model", "sequential", "group")


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: its accelerate hook's execution device, else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", [])]:
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return next(module.parameters()).device


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    placed = next(module.parameters()).device
    return placed.type == device.type and (device.index is None or placed.index == device.index)


def place_models(transformer: torch.nn.Module, vae: torch.nn.Module, device: torch.device, offload: str = "none",
                 compile: bool = False) -> None:
    """Move (or hook) the transformer and VAE for ``offload`` (:data:`OFFLOADS`); ``torch.compile`` them if asked."""
    if offload == "none":
        if not _on(transformer, device):  # torchao and bitsandbytes models are loaded onto it; GGUF ones are not
            transformer.to(device)
        vae.to(device)
    elif offload == "group":
        transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                         offload_type="block_level", num_blocks_per_group=1,
                                         use_stream=device.type == "cuda")
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
            raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}")
    from fluxsr_cli.model.attention import use_blockwise_attention
    from fluxsr_cli.model.vae import install_stats_group_norms

    install_stats_group_norms(vae)  # the same outputs; the tiled VAE can give them global statistics

    # the VAE's single 512-wide attention head: plain matmuls on CUDA, in a loop that runs eagerly
    # between the compiled graphs (fluxsr_cli.model.attention); with --compile its softmax is compiled too
    use_blockwise_attention(vae, compile_softmax=compile)
    if compile:
        # PyTorch's automatic dynamic shapes: the first shape compiles static; a second shape (another
        # image size in a batch, or the last, smaller group of --tile-batch) recompiles once with
        # dynamic sizes, and later shapes reuse that. dynamic=False recompiled for every image size.
        transformer.compile(dynamic=None)
        # the VAE's encoder and decoder too (its offload hook, if any, sits on the whole VAE, outside):
        # measured on an H200 at 1024 px, encode + decode 129 ms -> 48 ms. The tiled VAE's passes run
        # compiled as well, one graph per GroupNorm mode and tile shape (unmeasured on a GPU).
        vae.encoder.compile(dynamic=None)
        vae.decoder.compile(dynamic=None)


def free_memory() -> None:
    """Drop what Python and the CUDA caching allocator hold."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def transient_bytes(transformer: torch.nn.Module, offload: str) -> int:
    """GPU bytes of transformer weights that a call brings in and the free memory does not show yet:
    all of them with ``model`` offload, two blocks with ``group`` (one computing, one arriving), two
    of the largest layers with ``sequential``; none when the weights stay on the device."""
    if offload == "model":
        return _bytes(transformer)
    if offload == "group":
        blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
        return 2 * max(_bytes(b) for b in blocks)
    if offload == "sequential":
        return 2 * max(_bytes(m) for m in transformer.modules() if not list(m.children()))
    return 0
