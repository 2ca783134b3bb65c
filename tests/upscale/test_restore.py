"""The one-step restore end to end on the tiny random FLUX stack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxsr_cli.errors import ConfigError, ResourceError
from fluxsr_cli.model.architectures import FLUX_DEV_TRANSFORMER, TINY_TRANSFORMER
from fluxsr_cli.model.loading import pick_device
from fluxsr_cli.model.student import velocity
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.restore import load_upscaler
from tests.conftest import HUB_BASE, HUB_COMMUNITY, HUB_MODEL

NO_FIX = UpscaleOptions(color_fix="none")


def _opts(model, **kw) -> ModelOptions:
    return ModelOptions(model=str(model), device="cpu", **kw)


@pytest.fixture(scope="module")
def upscaler(tiny_ckpt):
    return load_upscaler(_opts(tiny_ckpt))


def test_odd_size_gives_exact_output_size(upscaler):
    lq = np.random.default_rng(0).random((37, 53, 3), dtype=np.float32)
    out = upscaler.upscale_array(lq, NO_FIX)
    assert out.shape == (148, 212, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_same_input_same_bytes(upscaler, small_photo):
    """A determinism test: no noise enters the restore (it encodes the posterior's mean), so the same
    input gives the same bytes; ``latent_dist.sample()`` in place of ``.mean`` makes it fail."""
    a = upscaler.upscale_array(small_photo, NO_FIX)
    b = upscaler.upscale_array(small_photo, NO_FIX)
    assert a.tobytes() == b.tobytes()


def test_restore_latent_is_one_euler_step(upscaler):
    """z_hat_0 = z_L - T_L v_theta(z_L, T_L), exactly as docs/method.md section 4 writes it."""
    z_l = torch.randn(1, 16, 6, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = z_l - upscaler.t_l * velocity(upscaler.transformer, z_l, upscaler.t_l, upscaler.cond)
    torch.testing.assert_close(upscaler.restore_latent(z_l), expected)


def test_bf16_restore_is_close_to_fp32(tiny_ckpt, upscaler, small_photo):
    """The GPU's default dtype, run on the CPU: bf16 weights and activations against fp32.

    Bound: mean absolute difference < 0.01 (2.5 levels of 255) and 99th percentile < 0.1; measured
    0.0049 and 0.050 on the tiny random model, whose random VAE amplifies rounding.
    """
    bf16 = load_upscaler(_opts(tiny_ckpt, dtype="bf16"))
    assert bf16.dtype == torch.bfloat16
    assert {next(m.parameters()).dtype for m in (bf16.transformer, bf16.vae)} == {torch.bfloat16}
    want, got = upscaler.upscale_array(small_photo, NO_FIX), bf16.upscale_array(small_photo, NO_FIX)
    assert got.dtype == np.float32 and got.shape == want.shape
    diff = np.abs(got - want)
    assert 0 < diff.mean() < 0.01 and np.quantile(diff, 0.99) < 0.1  # > 0: bf16 really ran


def test_settings_come_from_checkpoint_and_can_be_overridden(tiny_ckpt, tiny_community, tiny_base, small_photo):
    assert load_upscaler(_opts(tiny_community, base=str(tiny_base))).t_l == pytest.approx(0.3)
    default = load_upscaler(_opts(tiny_ckpt))
    other = load_upscaler(_opts(tiny_ckpt, t_l=0.5, guidance=3.0))
    assert default.t_l == 0.25 and other.t_l == 0.5 and other.cond.guidance == 3.0
    assert not np.array_equal(default.upscale_array(small_photo, NO_FIX), other.upscale_array(small_photo, NO_FIX))


def test_community_format_end_to_end(tiny_community, tiny_base, small_photo):
    up = load_upscaler(_opts(tiny_community, base=str(tiny_base)))
    assert up.upscale_array(small_photo, NO_FIX).shape == (192, 160, 3)


@pytest.mark.parametrize("model,base", [(HUB_MODEL, None), (HUB_COMMUNITY, HUB_BASE)])
def test_from_offline_hub_cache(offline_hub, small_photo, model, base):
    up = load_upscaler(ModelOptions(model=model, base=base, offline=True, device="cpu"))
    assert up.info.source == ("community" if base else "fluxsr")
    assert up.upscale_array(small_photo, NO_FIX).shape == (192, 160, 3)


def test_scale_option(tiny_ckpt, small_photo):
    up = load_upscaler(_opts(tiny_ckpt))
    assert up.upscale_array(small_photo, UpscaleOptions(scale=2, color_fix="none")).shape == (96, 80, 3)


def test_full_model_refused_on_cpu_unless_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ResourceError, match="11.*B-parameter.*--device cpu"):
        pick_device(None, FLUX_DEV_TRANSFORMER, "black-forest-labs/FLUX.1-dev")
    assert pick_device("cpu", FLUX_DEV_TRANSFORMER, "x").type == "cpu"
    assert pick_device(None, TINY_TRANSFORMER, "x").type == "cpu"


@pytest.mark.parametrize("kw", [{"scale": 0}, {"scale": 9}, {"color_fix": "x"}])
def test_bad_options(kw):
    with pytest.raises(ConfigError):
        UpscaleOptions(**kw)


@pytest.mark.parametrize("kw", [{"dtype": "fp8"}, {"t_l": 1.0}, {"offload": "disk"}])
def test_bad_model_options(kw):
    with pytest.raises(ConfigError):
        ModelOptions(**kw)


def test_embeddings_for_another_base_are_refused(tiny_ckpt, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from fluxsr_cli.errors import CheckpointError

    other = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, other)
    save_file({"prompt_embeds": torch.zeros(1, 8, 4096), "pooled_prompt_embeds": torch.zeros(1, 768)},
              str(other / "embeddings.safetensors"))
    with pytest.raises(CheckpointError, match="width 4096.*expects 32"):
        load_upscaler(_opts(other))


@pytest.mark.parametrize(("shape", "scale", "atol"), [
    ((1, 3, 37, 301), 4, 1e-6), ((2, 3, 16, 9), 2, 1e-6), ((1, 3, 1, 5), 4, 1e-6), ((1, 3, 50, 70), 3, 2e-5),
])
def test_cpu_bicubic_is_pytorchs_bicubic(shape, scale, atol, monkeypatch):
    """On the CPU the bicubic runs through OpenCV: the same function as PyTorch's, clamped to [0, 1]."""
    from fluxsr_cli.upscale import bicubic
    from fluxsr_cli.upscale.bicubic import bicubic_upsample

    real, calls = bicubic._bicubic_opencv, []
    monkeypatch.setattr(bicubic, "_bicubic_opencv", lambda x, s: calls.append(s) or real(x, s))
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(*shape, generator=g) * 1.4 - 0.2  # overshoots both ends: the clamp matters
    ref = torch.nn.functional.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    for x in (lq, lq.transpose(-1, -2).contiguous().transpose(-1, -2)):  # NCHW and a strided view
        out = bicubic_upsample(x, scale)
        assert out.shape == ref.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    assert calls == [scale, scale]  # the OpenCV path ran, not PyTorch's


def test_cpu_bicubic_ignores_the_default_dtype():
    """The result is float32 whatever ``torch.set_default_dtype`` says (OpenCV cannot fill float64)."""
    from fluxsr_cli.upscale.bicubic import bicubic_upsample

    x = torch.full((1, 3, 4, 4), 0.5)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = bicubic_upsample(x, 2)
    finally:
        torch.set_default_dtype(previous)
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((1, 3, 8, 8), 0.5))


def test_bicubic_keeps_autograd_and_other_dtypes_on_pytorch():
    from fluxsr_cli.upscale.bicubic import bicubic_upsample

    lq = torch.rand(1, 3, 8, 8, requires_grad=True)
    bicubic_upsample(lq, 4).sum().backward()  # OpenCV would cut the graph
    assert lq.grad is not None and lq.grad.abs().sum() > 0
    assert bicubic_upsample(torch.rand(1, 3, 8, 8, dtype=torch.float64), 2).dtype == torch.float64
