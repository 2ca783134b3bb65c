"""FLUX.1 architectures as configs: the full-size model and tiny random stand-ins.

The full configs are those published with FLUX.1-dev (``transformer/config.json`` and
``vae/config.json``); benchmarks build the full-size transformer from them with random weights, and
tests build tiny ones (1-2 blocks, a few heads) that load through exactly the same code paths.
"""

from __future__ import annotations

from typing import Any

import torch

FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}

FLUX_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
    "mid_block_add_attention": True,
}

TINY_TRANSFORMER: dict[str, Any] = {
    **FLUX_DEV_TRANSFORMER,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 16,
    "axes_dims_rope": [4, 6, 6],
}

TINY_VAE: dict[str, Any] = {
    **FLUX_VAE,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}

TINY_TEXT_LENGTH = 8  # T5 tokens in the tiny fixed conditioning


def _build(cls: Any, config: dict[str, Any], dtype: torch.dtype, device: torch.device | str, seed: int):
    """A diffusers model of class ``cls`` with seeded random weights, frozen, in eval mode.

    The weights are made in ``dtype`` on ``device`` directly: the full-size transformer in float32
    first would need 48 GB (twice its bf16 size) for a moment.
    """
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def build_transformer(config: dict[str, Any], dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu", seed: int = 0):
    """A ``FluxTransformer2DModel`` with random weights from ``config``."""
    from diffusers import FluxTransformer2DModel

    return _build(FluxTransformer2DModel, config, dtype, device, seed)


def build_vae(config: dict[str, Any], dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", seed: int = 0):
    """An ``AutoencoderKL`` with random weights from ``config``."""
    from diffusers import AutoencoderKL

    return _build(AutoencoderKL, config, dtype, device, seed)


def random_embeddings(config: dict[str, Any], length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fixed conditioning of the right shapes for a transformer ``config``."""
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(1, length, config["joint_attention_dim"], generator=g),
        "pooled_prompt_embeds": torch.randn(1, config["pooled_projection_dim"], generator=g),
    }
