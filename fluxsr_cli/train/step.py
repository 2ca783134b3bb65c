"""One training step of Flow Trajectory Distillation (docs/method.md sections 3-5), and the data it takes.

For a micro-batch of pairs (eps, z_0, z_L, x_0):

    t ~ U[T_L, 1];  z_t = noise -> LR point                       (losses.ftd_point)
    v_t, v_L = v_theta([z_t, z_L], [t, T_L])                      (one batched transformer pass)
    L_FTD   = || (u - T_L v_t) / (1 - T_L) - u^L ||^2             (losses.ftd_loss)
    z_hat_0 = z_L - T_L v_L;  x_hat_H = D(z_hat_0)                (decoder frozen, with gradients)
    L = lambda_ftd L_FTD + lambda_rec (MSE + lambda_tv TV-LPIPS) + lambda_adl ADL(features of v_L)

The data order, the crops and the flow times are drawn from generators seeded by (seed,
micro-step, process), so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from fluxsr_cli.errors import InputError
from fluxsr_cli.train.losses import LossWeights


class Student(torch.nn.Module):
    """v_theta(z, t) with the fixed conditioning; the module accelerate wraps (DDP/FSDP)."""

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                 guidance: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.transformer = transformer
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)  # [1, L, D]
        self.register_buffer("pooled_prompt_embeds", pooled, persistent=False)  # [1, P]
        self.guidance = guidance
        self.dtype = dtype

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from fluxsr_cli.model.student import Conditioning, velocity

        cond = Conditioning(self.prompt_embeds, self.pooled_prompt_embeds, self.guidance)
        return velocity(self.transformer, z, t, cond, dtype=self.dtype).float()  # [B, 16, h, w]


# --------------------------------------------------------------------------------------------
# One training step: the algorithm, on one screen
# --------------------------------------------------------------------------------------------

def training_step(student: torch.nn.Module, vae: torch.nn.Module, batch: dict[str, torch.Tensor], t_l: float,
                  weights: LossWeights, generator: torch.Generator, lpips: torch.nn.Module | None = None,
                  adl_blocks: list[tuple[str, int]] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch and its named terms (detached), per the module docstring."""
    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.model.flows import one_step
    from fluxsr_cli.train.adl import FeatureCapture
    from fluxsr_cli.train.losses import adl_loss, ftd_loss, ftd_point, reconstruction_loss, total_loss

    eps, z_0, z_l = batch["eps"], batch["z_0"], batch["z_l"]  # [B, 16, h, w]
    b = eps.shape[0]
    z_t, t = ftd_point(eps, z_l, t_l, generator)
    need_one_step = weights.rec > 0 or weights.adl > 0
    z_in, t_in = (torch.cat([z_t, z_l]), torch.cat([t, t.new_full((b,), t_l)])) if need_one_step else (z_t, t)
    blocks = adl_blocks if weights.adl > 0 else []
    inner = unwrap_student(student)
    with FeatureCapture(inner.transformer, blocks, inner.prompt_embeds.shape[1]) as capture:
        v = student(z_in, t_in)  # [B or 2B, 16, h, w]
    terms = {"ftd": ftd_loss(v[:b], eps, z_0, z_l, t_l)}
    if weights.adl > 0:
        terms["adl"] = adl_loss([f[b:] for f in capture.take()])  # image tokens of the one-step pass
    if weights.rec > 0:
        z_hat_0 = one_step(z_l, v[b:], t_l)  # z_L - T_L v_theta(z_L, T_L)
        x_hat = vae_lib.decode(vae, z_hat_0)  # [B, 3, H, W], gradients flow through the frozen decoder
        terms.update(reconstruction_loss(x_hat, batch["hq"], lpips, weights))
    loss = total_loss(terms, weights)
    return loss, {k: v.detach() for k, v in terms.items()}


def unwrap_student(model: torch.nn.Module) -> Student:
    while not isinstance(model, Student) and hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


# --------------------------------------------------------------------------------------------
# Data: a stateless, resumable order
# --------------------------------------------------------------------------------------------

def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-step on one process (crops, flow times)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 4099 + rank)


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist())


def batch_indices(n: int, batch: int, micro_step: int, rank: int, world: int, seed: int) -> list[int]:
    """Positions (into the training pairs) of one process's micro-batch: epochs of fresh permutations."""
    start = (micro_step * world + rank) * batch
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(start, start + batch)]


def random_crop(item: dict[str, torch.Tensor], crop: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The same random ``crop`` px window of the latents [16, h, w] and image [3, H, W] (16 px grid)."""
    h, w = item["z_0"].shape[-2:]
    size = crop // 8
    if crop == 0 or (size >= h and size >= w):
        return item
    ch, cw = min(size, h), min(size, w)
    oy = 2 * int(torch.randint(0, (h - ch) // 2 + 1, (1,), generator=generator))  # even latent offsets
    ox = 2 * int(torch.randint(0, (w - cw) // 2 + 1, (1,), generator=generator))
    out = {k: item[k][:, oy:oy + ch, ox:ox + cw] for k in ("eps", "z_0", "z_l")}
    out["hq"] = item["hq"][:, 8 * oy:8 * (oy + ch), 8 * ox:8 * (ox + cw)]
    return out


def collate(items: list[dict[str, torch.Tensor]], where: Path) -> dict[str, torch.Tensor]:
    shapes = {tuple(i["z_0"].shape) for i in items}
    if len(shapes) > 1:
        raise InputError(f"{where}: pairs of different sizes {sorted(shapes)} in one batch; set crop_size "
                         "(distill.crop_size) to a size all of them reach")
    return {k: torch.stack([i[k] for i in items]) for k in ("eps", "z_0", "z_l", "hq")}
