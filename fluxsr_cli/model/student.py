"""The student v_theta: the FLUX transformer called on unpacked latents at a flow time t.

Shared by the one-step restore and the trainer, so both call the model the same way:
``velocity(transformer, z, t, cond)`` takes a normalised latent [B, 16, h, w] and t in [0, 1]
(the transformer multiplies by 1000 itself) and returns the predicted velocity [B, 16, h, w].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluxsr_cli.model.latents import image_ids, pack, text_ids, unpack


@dataclass
class Conditioning:
    """Fixed text conditioning, computed once from a prompt: no text encoder at run time."""

    prompt_embeds: torch.Tensor  # [1, L, D_text] (T5)
    pooled_prompt_embeds: torch.Tensor  # [1, D_pooled] (CLIP)
    guidance: float = 1.0

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Conditioning:
        return Conditioning(self.prompt_embeds.to(device, dtype), self.pooled_prompt_embeds.to(device, dtype),
                            self.guidance)


def velocity(transformer: torch.nn.Module, z: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """v_theta(z, t): [B, C, h, w] latent and t ([B] or scalar) -> [B, C, h, w] velocity (z's dtype)."""
    b, _, h, w = z.shape
    device = z.device
    dtype = dtype or transformer.dtype  # diffusers' compute dtype, whatever the weights are stored in
    t = torch.as_tensor(t, device=device, dtype=dtype).reshape(-1).expand(b)
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((b,), cond.guidance, device=device, dtype=dtype)
    length = cond.prompt_embeds.shape[1]
    out = transformer(
        hidden_states=pack(z).to(dtype),  # [B, h/2 * w/2, 4C]
        encoder_hidden_states=cond.prompt_embeds.to(device, dtype).expand(b, -1, -1),  # [B, L, D]
        pooled_projections=cond.pooled_prompt_embeds.to(device, dtype).expand(b, -1),  # [B, P]
        timestep=t,
        img_ids=image_ids(h, w, device=device, dtype=dtype),
        txt_ids=text_ids(length, device=device, dtype=dtype),
        guidance=guidance,
        return_dict=False,
    )[0]
    return unpack(out, h, w).to(z.dtype)
