"""Validation during training: one-step restores of held-out pairs, as latent errors and a picture grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.train.step import Student


def latent_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / sqrt(numel): the root-mean-square latent error."""
    return float((a.float() - b.float()).square().mean().sqrt())


@torch.no_grad()
def one_step_errors(student: Student, items: list[dict[str, torch.Tensor]], t_l: float) -> dict[str, float]:
    """Mean RMS error of the one-step z_hat_0 and of the identity z_L against z_0 over ``items``."""
    from fluxsr_cli.model.flows import one_step

    device = next(student.parameters()).device
    err, ident = [], []
    for item in items:
        z_l, z_0 = item["z_l"][None].to(device), item["z_0"][None].to(device)
        z_hat = one_step(z_l, student(z_l, torch.full((1,), t_l, device=device)), t_l)
        err.append(latent_error(z_hat, z_0))
        ident.append(latent_error(z_l, z_0))
    return {"one_step_error": sum(err) / len(err), "identity_error": sum(ident) / len(ident)}


@torch.no_grad()
def validate(student: Student, vae: torch.nn.Module, dataset: Any, val_ids: list[int], t_l: float, grid: Path,
             write: bool = True) -> dict[str, float]:
    """One-step restore of the held-out pairs: latent errors, and a grid PNG (rows: LR-up | output | x_0)."""
    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.model.flows import one_step

    was_training = student.training
    student.eval()
    items = [dataset[i] for i in val_ids]
    errors = one_step_errors(student, items, t_l)
    if write:
        device = next(student.parameters()).device
        rows = []
        for item in items:
            z_l = item["z_l"][None].to(device)
            z_hat = one_step(z_l, student(z_l, torch.full((1,), t_l, device=device)), t_l)
            pics = [vae_lib.decode(vae, z_l), vae_lib.decode(vae, z_hat), item["hq"][None].to(device).float()]
            rows.append(torch.cat([p.cpu() for p in pics], dim=-1))  # [1, 3, H, 3W]
        _save_grid(torch.cat(rows, dim=-2)[0], grid)
    student.train(was_training)
    return errors


def _save_grid(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from fluxsr_cli.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)
