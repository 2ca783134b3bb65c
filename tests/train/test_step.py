"""The wiring of one training step: which half of the batched student pass each loss term sees.

``training_step`` runs the student once on [z_t; z_L] at [t; T_L]. A recording student keeps what
it was called with; the expected terms are then written out from METHOD.md with separate calls on
each half: L_FTD from v_theta(z_t, t), the reconstruction from D(z_L - T_L v_theta(z_L, T_L)) and
ADL from the image tokens of the z_L pass, by hooks written here. Each check also shows that the
other half would have given another value, so swapped slices fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fluxsr_cli.model.architectures import (
    TINY_TEXT_LENGTH,
    TINY_TRANSFORMER,
    TINY_VAE,
    build_transformer,
    build_vae,
    random_embeddings,
)
from fluxsr_cli.train.losses import LossWeights
from fluxsr_cli.train.step import Student, training_step

T_L, B = 0.25, 2


class RecordingStudent(Student):
    """The real student plus (1 + t) z, which also keeps the inputs of every call.

    The added term makes the velocity depend strongly on the input (a random tiny FLUX's barely
    does), so that the two halves of the batch give clearly different loss terms.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((z.detach().clone(), t.detach().clone()))
        return super().forward(z, t) + (1 + t.view(-1, 1, 1, 1)) * z


@pytest.fixture(scope="module")
def setup():
    emb = random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=1)
    student = RecordingStudent(build_transformer(TINY_TRANSFORMER, seed=2), emb["prompt_embeds"],
                               emb["pooled_prompt_embeds"], 1.0, torch.float32)
    g = torch.Generator().manual_seed(3)
    eps, z_l, noise = (torch.randn(B, 16, 4, 6, generator=g) for _ in range(3))
    z_0 = z_l - 0.1 * noise  # a small u^SR, so that L_FTD is dominated by the student's velocity
    vae = build_vae(TINY_VAE, seed=4)
    with torch.no_grad():
        hq = _decode(vae, z_0)  # x_0 = D(z_0), as the teacher's pairs hold it
    return student, vae, {"eps": eps, "z_0": z_0, "z_l": z_l, "hq": hq}


def _decode(vae, z: torch.Tensor) -> torch.Tensor:
    """D(z) by hand: de-normalise, decode, [-1, 1] -> [0, 1]."""
    raw = z / vae.config.scaling_factor + vae.config.shift_factor
    return ((vae.decode(raw).sample + 1) / 2).clamp(0, 1)


def _adl_by_hand(student: Student, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean over blocks of mean_i cos(H_i, mean_j H_j): image tokens of double block 0 and single block 1."""
    tr, feats = student.transformer, []
    hooks = [tr.transformer_blocks[0].attn.register_forward_hook(lambda m, a, out: feats.append(out[0])),
             tr.single_transformer_blocks[1].attn.register_forward_hook(
                 lambda m, a, out: feats.append(out[:, TINY_TEXT_LENGTH:]))]
    try:
        student(z, t)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([F.cosine_similarity(h, h.mean(1, keepdim=True).expand_as(h), dim=-1).mean()
                        for h in feats]).mean()


@torch.no_grad()
def test_ftd_sees_the_z_t_half_and_reconstruction_and_adl_the_z_l_half(setup):
    student, vae, batch = setup
    eps, z_0, z_l, hq = batch["eps"], batch["z_0"], batch["z_l"], batch["hq"]
    weights = LossWeights(ftd=1.0, rec=1.0, tv=0.0, adl=0.5)
    student.calls.clear()
    _, terms = training_step(student, vae, batch, T_L, weights, torch.Generator().manual_seed(8),
                             adl_blocks=[("double", 0), ("single", 1)])
    (z_in, t_in), = student.calls  # one batched pass
    t = t_in[:B]
    assert bool((t > T_L).all()) and bool((t <= 1).all()) and torch.equal(t_in[B:], torch.full((B,), T_L))
    s = ((t - T_L) / (1 - T_L)).view(B, 1, 1, 1)
    z_t = (1 - s) * z_l + s * eps  # the noise -> LR point at t (METHOD.md section 3)
    torch.testing.assert_close(z_in, torch.cat([z_t, z_l]))
    student.calls.clear()
    v_t, v_l = student(z_t, t), student(z_l, torch.full((B,), T_L))  # each half on its own

    def ftd(v):  # (T_L / (1 - T_L))^2 mean || v - (z_L - z_0) / T_L ||^2
        return (T_L / (1 - T_L)) ** 2 * ((v - (z_l - z_0) / T_L) ** 2).mean()

    def mse(v):
        return ((_decode(vae, z_l - T_L * v) - hq) ** 2).mean()

    adl_l = _adl_by_hand(student, z_l, torch.full((B,), T_L))
    adl_t = _adl_by_hand(student, z_t, t)
    for name, got, right, wrong in [("ftd", terms["ftd"], ftd(v_t), ftd(v_l)), ("mse", terms["mse"], mse(v_l), mse(v_t)),
                                    ("adl", terms["adl"], adl_l, adl_t)]:
        assert got.item() == pytest.approx(right.item(), rel=1e-5), name  # measured: 2e-7 or better
        assert wrong.item() != pytest.approx(right.item(), rel=1e-2), name  # the other half: 3-70 % off


@torch.no_grad()
def test_ftd_alone_runs_the_z_t_half_only(setup):
    student, vae, batch = setup
    student.calls.clear()
    _, terms = training_step(student, vae, batch, T_L, LossWeights(rec=0.0, adl=0.0),
                             torch.Generator().manual_seed(8))
    (z_in, t_in), = student.calls
    assert z_in.shape[0] == B and bool((t_in > T_L).all()) and set(terms) == {"ftd"}
