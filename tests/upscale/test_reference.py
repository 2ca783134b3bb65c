"""The one-step restore against references written on diffusers' public objects, not on our helpers.

Each expected value here is built without ``fluxsr_cli.model`` (no ``pack``, ``image_ids``,
``velocity``, ``vae.encode``/``decode``): the transformer is called by hand on tokens packed and
position ids built the way ``FluxPipeline`` builds them, and the restore's second half (Euler step,
unpacking, de-normalising, decoding) is ``FluxPipeline`` itself, run for one step from t = T_L with
the flow-matching Euler scheduler. So a wrong time scale (diffusers multiplies t and the guidance by
1000 itself), a missing ``2x - 1`` or ``(z - shift) * scale``, or a wrong token layout makes them fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fluxsr_cli.model.architectures import (
    TINY_TEXT_LENGTH,
    TINY_TRANSFORMER,
    build_transformer,
    random_embeddings,
)
from fluxsr_cli.model.student import Conditioning, velocity
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.restore import load_upscaler

T_L, GUIDANCE = 0.3, 2.5  # neither the default 0.25 nor 1.0: a dropped setting shows


def _pack(z: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C], written as FluxPipeline's ``_pack_latents`` writes it."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def _image_ids(h: int, w: int) -> torch.Tensor:
    """Position ids of a h x w latent's tokens as FluxPipeline builds them: (0, row, col), row-major."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def _by_hand(tr, z: torch.Tensor, t: float, emb: dict[str, torch.Tensor], guidance: float) -> torch.Tensor:
    """v(z, t) of one latent [1, C, h, w]: one plain call of the diffusers transformer."""
    _, _, h, w = z.shape
    out = tr(hidden_states=_pack(z), encoder_hidden_states=emb["prompt_embeds"],
             pooled_projections=emb["pooled_prompt_embeds"], timestep=torch.tensor([t]),
             img_ids=_image_ids(h, w), txt_ids=torch.zeros(emb["prompt_embeds"].shape[1], 3),
             guidance=torch.tensor([guidance]), return_dict=False)[0]
    return _unpack(out, h, w)


def test_velocity_is_a_plain_transformer_call():
    tr = build_transformer(TINY_TRANSFORMER, seed=4)
    emb = random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=5)
    cond = Conditioning(emb["prompt_embeds"], emb["pooled_prompt_embeds"], GUIDANCE)
    z = torch.randn(2, 16, 6, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = velocity(tr, z, torch.tensor([0.3, 0.8]), cond)  # one time per sample
        want = torch.cat([_by_hand(tr, z[:1], 0.3, emb, GUIDANCE), _by_hand(tr, z[1:], 0.8, emb, GUIDANCE)])
        assert (want - _by_hand(tr, z[:1], 0.3, emb, 1.0)[:1]).abs().max() > 1e-3  # the guidance matters here
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tiny_base, tmp_path_factory):
    from fluxsr_cli.model.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ref") / "ckpt", tiny_base, t_l=T_L, guidance=GUIDANCE)


@pytest.fixture(scope="module")
def upscaler(checkpoint):
    return load_upscaler(ModelOptions(model=str(checkpoint), device="cpu"))


def _diffusers_restore(up, lq: torch.Tensor, scale: int) -> torch.Tensor:
    """The restore of METHOD.md section 4 on diffusers' objects: [1, 3, h, w] -> [1, 3, h*scale, w*scale].

    Torch bicubic, reflect pad to 16 px, ``vae.encode(2x - 1).latent_dist.mean``, ``(z - shift) * scale``,
    packed; then FluxPipeline for one Euler step from sigma = T_L to 0 (z_L - T_L v), which unpacks,
    de-normalises, decodes and maps to [0, 1]; then the crop.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    vae, tr = up.vae, up.transformer
    h, w = lq.shape[-2] * scale, lq.shape[-1] * scale
    up_x = F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    H, W = -(-h // 16) * 16, -(-w // 16) * 16
    x = F.pad(up_x, (0, W - w, 0, H - h), mode="reflect")
    raw = vae.encode(2 * x - 1).latent_dist.mean
    z_l = (raw - vae.config.shift_factor) * vae.config.scaling_factor
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
                        vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt_embeds=up.cond.prompt_embeds, pooled_prompt_embeds=up.cond.pooled_prompt_embeds,
                 latents=_pack(z_l), height=H, width=W, num_inference_steps=1, sigmas=[T_L],
                 guidance_scale=GUIDANCE, output_type="pt").images
    return image[..., :h, :w]


@pytest.mark.parametrize("scale", [4, 2])
def test_restore_is_diffusers_one_step_chain(upscaler, small_photo, scale):
    """upscale_tensor (no colour fix) == the chain on diffusers' objects, within float rounding."""
    lq = torch.from_numpy(small_photo[:37, :29]).permute(2, 0, 1)[None].contiguous()  # padded at both sides
    assert upscaler.t_l == T_L and upscaler.cond.guidance == GUIDANCE
    with torch.no_grad():
        want = _diffusers_restore(upscaler, lq, scale)
    got = upscaler.upscale_tensor(lq, UpscaleOptions(scale=scale, color_fix="none"))
    assert got.shape == want.shape == (1, 3, 37 * scale, 29 * scale)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_guidance_alone_changes_the_output(checkpoint, small_photo):
    """t_l held fixed; only the guidance differs."""
    lq = torch.from_numpy(small_photo).permute(2, 0, 1)[None].contiguous()
    options = UpscaleOptions(color_fix="none")
    outs = [load_upscaler(ModelOptions(model=str(checkpoint), device="cpu", t_l=T_L, guidance=g)).upscale_tensor(
        lq, options) for g in (GUIDANCE, 4.0)]
    assert (outs[0] - outs[1]).abs().mean() > 1e-3


def test_the_checkpoints_guidance_and_t_l_reach_the_embedders(upscaler, small_photo):
    """Spy on the transformer's time/guidance embedding: it gets 1000 t_L and 1000 g (diffusers scales by 1000)."""
    seen, embedded = [], []
    embed = upscaler.transformer.time_text_embed
    hooks = [embed.register_forward_pre_hook(lambda m, args: seen.append((args[0].clone(), args[1].clone()))),
             embed.guidance_embedder.register_forward_hook(lambda m, args, out: embedded.append(out))]
    try:
        upscaler.upscale_array(small_photo, UpscaleOptions(color_fix="none"))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 1 and len(embedded) == 1
    timestep, guidance = seen[0]
    torch.testing.assert_close(timestep, torch.tensor([1000 * T_L]))
    torch.testing.assert_close(guidance, torch.tensor([1000 * GUIDANCE]))
