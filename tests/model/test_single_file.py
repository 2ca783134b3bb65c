"""Bring your own weights: FLUX.1-dev as a BFL-layout safetensors file (bf16, fp8), as GGUF, and the VAE
as ``ae.safetensors``, through the real diffusers single-file loaders, offline.

diffusers' FLUX converter splits ``linear1`` at the full width of 3072, so these files come from a
full-width transformer with one double and one single block (0.55B parameters, 1.1 GB in bf16),
written by the test in the layouts people download (tests/model/flux_files.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from fluxsr_cli.errors import CheckpointError, ConfigError
from fluxsr_cli.model.architectures import FLUX_DEV_TRANSFORMER, FLUX_VAE, build_transformer, build_vae
from fluxsr_cli.model.checkpoint import CheckpointInfo, save_checkpoint
from fluxsr_cli.model.loading import load_transformer
from fluxsr_cli.model.single_file import inspect_file
from fluxsr_cli.model.student import velocity
from fluxsr_cli.model.tiny import random_embeddings, random_lora
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.restore import load_upscaler
from tests.model.flux_files import SHALLOW, to_bfl, vae_to_ldm, write_gguf

pytestmark = pytest.mark.slow
pytest.importorskip("gguf", reason="GGUF files need the gguf package (the dev extra installs it)")

NO_FIX = UpscaleOptions(color_fix="none")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A shallow full-width FLUX.1-dev stack as a diffusers folder and as the single files people have,
    plus a checkpoint (LoRA + embeddings of FLUX.1-dev's widths) whose base is the folder."""
    root = tmp_path_factory.mktemp("single")
    config = {**FLUX_DEV_TRANSFORMER, **SHALLOW}
    transformer = build_transformer(config, dtype=torch.bfloat16, seed=7)
    sd = transformer.state_dict()
    transformer.save_pretrained(root / "base" / "transformer")
    vae = build_vae(FLUX_VAE, seed=8)
    vae.save_pretrained(root / "base" / "vae")
    bfl = to_bfl(sd)
    save_file(bfl, str(root / "flux1-dev.safetensors"))
    fp8 = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 and k.endswith("weight") else v) for k, v in bfl.items()}
    save_file(fp8, str(root / "flux1-dev-fp8.safetensors"))
    write_gguf(bfl, root / "flux1-dev-BF16.gguf", "BF16")
    write_gguf(bfl, root / "flux1-dev-Q8_0.gguf", "Q8_0")
    save_file(vae_to_ldm(vae.state_dict()), str(root / "ae.safetensors"))
    schnell = {k: v for k, v in bfl.items() if not k.startswith("guidance_in.")}
    save_file(schnell, str(root / "flux1-schnell.safetensors"))
    fill = {**{k: v for k, v in bfl.items() if k.startswith(("double_blocks.0.img_attn", "guidance_in"))},
            "img_in.weight": torch.zeros(3072, 384, dtype=torch.bfloat16)}
    save_file(fill, str(root / "flux1-fill.safetensors"))
    lora = random_lora(transformer, rank=4, seed=9, std=0.02)
    info = CheckpointInfo(base_model=str(root / "base"), lora_rank=4, lora_alpha=4.0)
    emb = random_embeddings(config, 8, seed=10)
    lora_config = {k: (sorted(v) if isinstance(v, set) else v)
                   for k, v in transformer.peft_config["default"].to_dict().items()}
    save_checkpoint(root / "ckpt", info, emb, lora_state_dict=lora, lora_config=lora_config)
    del transformer, sd, bfl, fp8
    return root


def _latent(files):
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))


def _velocity(up, z):
    with torch.no_grad():
        return velocity(up.transformer, z, up.t_l, up.cond, dtype=up.dtype)


def _load(files, **kw):
    return load_upscaler(ModelOptions(model=str(files / "ckpt"), device="cpu", offline=True, **kw))


def rms(x):
    return float(x.float().square().mean().sqrt())


def test_inspection_reads_the_layout_from_the_keys(files):
    info = inspect_file(files / "flux1-dev.safetensors")
    assert (info.kind, info.format, info.weights) == ("FLUX transformer", "safetensors", "BF16")
    assert (info.num_double, info.num_single, info.in_channels, info.guidance) == (1, 1, 64, True)
    assert inspect_file(files / "flux1-dev-fp8.safetensors").fp8
    gguf = inspect_file(files / "flux1-dev-Q8_0.gguf")
    assert (gguf.format, gguf.weights, gguf.num_double, gguf.in_channels) == ("gguf", "Q8_0", 1, 64)
    assert inspect_file(files / "ae.safetensors").kind == "VAE"


def test_a_bf16_file_gives_the_bytes_of_the_folder(files, small_photo):
    folder = _load(files, base=str(files / "base"))
    single = _load(files, base=str(files / "flux1-dev.safetensors"), vae=str(files / "ae.safetensors"))
    assert folder.upscale_array(small_photo[:16, :16], NO_FIX).tobytes() == \
        single.upscale_array(small_photo[:16, :16], NO_FIX).tobytes()


def test_gguf_keeps_its_blocks_quantized_and_applies_the_lora_unfused(files):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    z = _latent(files)
    exact = load_transformer(files / "base", torch.float32)
    from fluxsr_cli.model.loading import apply_lora

    apply_lora(exact, files / "ckpt" / "lora.safetensors", fuse=False)
    reference = _load(files, base=str(files / "base"))
    with torch.no_grad():
        v_exact = velocity(exact, z, reference.t_l, reference.cond)
    bf16 = _load(files, base=str(files / "flux1-dev-BF16.gguf"), vae=str(files / "ae.safetensors"))
    q8 = _load(files, base=str(files / "flux1-dev-Q8_0.gguf"), vae=str(files / "ae.safetensors"))
    layer = q8.transformer.transformer_blocks[0].attn.to_q
    assert isinstance(layer.base_layer.weight, GGUFParameter) and "fluxsr" in layer.lora_A  # PEFT over GGUF
    torch.testing.assert_close(_velocity(bf16, z), v_exact, atol=1e-6, rtol=1e-5)  # BF16 blocks: exact
    assert rms(_velocity(q8, z) - v_exact) / rms(v_exact) < 0.02  # Q8_0: measured 0.8 %
    with pytest.raises(ConfigError, match="quantized already"):
        _load(files, base=str(files / "flux1-dev-Q8_0.gguf"), vae=str(files / "ae.safetensors"), quantize="fp8")


def test_an_fp8_file_runs_as_quantize_fp8(files, tmp_path, monkeypatch):
    pytest.importorskip("torchao")
    monkeypatch.setenv("FLUXSR_CACHE", str(tmp_path / "cache"))
    notes: list[str] = []
    fp8 = load_upscaler(ModelOptions(model=str(files / "ckpt"), base=str(files / "flux1-dev-fp8.safetensors"),
                                     vae=str(files / "ae.safetensors"), device="cpu", offline=True),
                        notice=notes.append)
    assert any("runs as --quantize fp8" in n for n in notes)
    assert {type(m.weight).__name__ for m in fp8.transformer.modules() if isinstance(m, torch.nn.Linear)} \
        == {"Float8Tensor"}
    plain = _load(files, base=str(files / "base"))
    z = _latent(files)
    assert rms(_velocity(fp8, z) - _velocity(plain, z)) / rms(_velocity(plain, z)) < 0.15  # e4m3 twice: ~5-8 %


@pytest.mark.parametrize(("name", "message"), [
    ("flux1-schnell.safetensors", "no guidance embedder, so it is FLUX.1-schnell"),
    ("flux1-fill.safetensors", "FLUX.1 Fill .384 input channels"),
    ("ae.safetensors", "is a VAE, not a transformer; pass it with --vae"),
    ("ckpt/lora.safetensors", "is a LoRA"),
])
def test_a_file_that_is_not_flux_dev_is_refused_by_name(files, tmp_path, name, message):
    with pytest.raises(CheckpointError, match=message):
        _load(files, base=str(files / name))
    src = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    result = CliRunner().invoke(app, ["upscale", str(src), "-o", str(tmp_path / "out.png"), "--model",
                                      str(files / "ckpt"), "--base", str(files / name), "--device", "cpu"])
    assert result.exit_code == 3 and message.split(" ")[-1] in result.output and not (tmp_path / "out.png").exists()


def test_text_encoders_and_scaled_fp8_are_named(files, tmp_path):
    t5 = tmp_path / "t5xxl_fp16.safetensors"
    save_file({"shared.weight": torch.zeros(4, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)},
              str(t5))
    with pytest.raises(CheckpointError, match="is a text encoder"):
        _load(files, base=str(t5))
    scaled = tmp_path / "flux1-dev-scaled-fp8.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(9, 4).to(torch.float8_e4m3fn),
               "double_blocks.0.img_attn.qkv.scale_weight": torch.ones(1), "guidance_in.in_layer.weight": torch.zeros(4, 4),
               "img_in.weight": torch.zeros(3072, 64)}, str(scaled))
    with pytest.raises(CheckpointError, match="scaled fp8"):
        _load(files, base=str(scaled))
