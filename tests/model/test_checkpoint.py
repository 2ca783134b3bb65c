"""Checkpoint resolution and loading on tiny random FLUX stacks saved in the real formats."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from fluxsr_cli.errors import CheckpointError
from fluxsr_cli.model import checkpoint as ck
from fluxsr_cli.model import hub, loading
from fluxsr_cli.model.student import Conditioning, velocity
from tests.conftest import HUB_BASE, HUB_MODEL


def _v(transformer, cond_source) -> torch.Tensor:
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = Conditioning(cond_source.prompt_embeds, cond_source.pooled_prompt_embeds, 1.0)
    with torch.no_grad():
        return velocity(transformer, z, 0.25, cond)


def test_fluxsr_format_reads_settings_and_embeddings(tiny_ckpt, tiny_base):
    c = ck.read_checkpoint(tiny_ckpt)
    assert c.info.source == "fluxsr" and c.info.t_l == 0.25 and c.info.lora_rank == 4
    assert c.info.base_model == str(tiny_base)
    assert c.prompt_embeds.shape == (1, 8, 32) and c.pooled_prompt_embeds.shape == (1, 16)
    assert c.lora_file == tiny_ckpt / "lora.safetensors"


def test_community_format_reads_training_config(tiny_community):
    c = ck.read_checkpoint(tiny_community)
    assert c.info.source == "community" and c.info.t_l == pytest.approx(0.3)
    assert c.lora_file.name == "pytorch_lora_weights.safetensors"
    assert c.prompt_embeds.ndim == 3 and c.pooled_prompt_embeds.ndim == 2


@pytest.mark.parametrize("fmt", ["fluxsr", "community"])
def test_lora_changes_the_output_and_fuses(fmt, tiny_ckpt, tiny_community, tiny_base):
    c = ck.read_checkpoint(tiny_ckpt if fmt == "fluxsr" else tiny_community)
    plain = loading.load_transformer(tiny_base, torch.float32)
    base_v = _v(plain, c)
    loaded = loading.load_transformer(tiny_base, torch.float32)
    unfused = loading.load_transformer(tiny_base, torch.float32)
    n = loading.apply_lora(loaded, c.lora_file, fuse=True)
    loading.apply_lora(unfused, c.lora_file, fuse=False)
    assert n > 0
    assert not getattr(loaded, "peft_config", None) or not any(
        "lora_" in name for name, _ in loaded.named_parameters())  # fused and unloaded
    lora_v = _v(loaded, c)
    assert (lora_v - base_v).abs().max() > 1e-3  # the LoRA really acts
    torch.testing.assert_close(lora_v, _v(unfused, c), rtol=1e-4, atol=1e-5)  # fusing changes nothing


def test_lora_with_wrong_key_layout_fails_loudly(tiny_ckpt, tiny_base, tmp_path):
    """A LoRA whose keys name no layer must not load silently as the base model."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny_ckpt / "lora.safetensors"))
    renamed = {k.replace("transformer_blocks", "double_blocks"): v for k, v in sd.items()}
    save_file(renamed, str(tmp_path / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="matched no layer|does not fit"):
        loading.apply_lora(loading.load_transformer(tiny_base, torch.float32), tmp_path / "lora.safetensors")


def test_lora_for_another_model_fails(tiny_base, tmp_path):
    from safetensors.torch import save_file

    save_file({"unet.down.lora_A.weight": torch.zeros(4, 8), "unet.down.lora_B.weight": torch.zeros(8, 4)},
              str(tmp_path / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="lora.safetensors"):
        loading.apply_lora(loading.load_transformer(tiny_base, torch.float32), tmp_path / "lora.safetensors")


def test_corrupt_safetensors_is_one_line(tiny_ckpt, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, broken)
    data = (broken / "embeddings.safetensors").read_bytes()
    (broken / "embeddings.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        ck.read_checkpoint(broken)
    msg = str(e.value)
    assert "embeddings.safetensors" in msg and "corrupt" in msg and "\n" not in msg


def test_missing_file_is_named(tiny_ckpt, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "embeddings.safetensors").unlink()
    with pytest.raises(CheckpointError, match="embeddings.safetensors: file missing"):
        ck.read_checkpoint(broken)


def test_missing_base_weights_are_named(tiny_base, tmp_path):
    broken = tmp_path / "base"
    shutil.copytree(tiny_base, broken)
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="vae: no .safetensors weights"):
        loading.load_vae(broken, torch.float32)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a fluxsr checkpoint"):
        ck.read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such folder"):
        ck.read_checkpoint(tmp_path / "nope")


def test_hub_cache_offline_resolution(offline_hub):
    """The real huggingface_hub resolution finds repos laid out in a local cache, offline."""
    c = ck.read_checkpoint(HUB_MODEL, offline=True)
    assert c.info.base_model == HUB_BASE
    assert "snapshots" in str(c.root)
    base = hub.resolve(HUB_BASE, offline=True, allow_patterns=hub.BASE_FILES)
    assert (base / "transformer" / "config.json").is_file()


def test_offline_and_not_cached(offline_hub):
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache and offline mode is on"):
        ck.read_checkpoint("someone/not-cached", offline=True)


def _raising(exc):
    def fake(*args, **kwargs):
        if kwargs.get("local_files_only"):
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not cached")
        raise exc

    return fake


@pytest.mark.parametrize("status,token,expect", [
    (401, None, "not logged in.*HF_TOKEN"),
    (403, "hf_x", "accept the licence at https://huggingface.co/black-forest-labs/FLUX.1-dev"),
])
def test_gated_repo_messages(monkeypatch, status, token, expect):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    response = SimpleNamespace(status_code=status, headers={}, request=None, url="https://huggingface.co")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raising(GatedRepoError("gated", response=response)))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    notes = []
    with pytest.raises(CheckpointError, match=expect):
        hub.resolve(hub.DEFAULT_BASE, first_download_note=hub.FLUX_LICENCE_NOTE, notice=notes.append)
    assert notes[0] == hub.FLUX_LICENCE_NOTE  # the licence note comes before the first download


def test_missing_repo_message(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    response = SimpleNamespace(status_code=404, headers={}, request=None, url="https://huggingface.co")
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        _raising(RepositoryNotFoundError("missing", response=response)))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="no such repository"):
        hub.resolve("nobody/nothing")


def test_save_checkpoint_refuses_to_overwrite(tiny_ckpt):
    c = ck.read_checkpoint(tiny_ckpt)
    with pytest.raises(CheckpointError, match="exists; pass --overwrite"):
        ck.save_checkpoint(tiny_ckpt, c.info, {"prompt_embeds": c.prompt_embeds,
                                               "pooled_prompt_embeds": c.pooled_prompt_embeds},
                           lora_state_dict={})


LORA_RANK, LORA_ALPHA = 4, 8.0  # scale alpha / r = 2: a loader that drops alpha (scale 1) fails


@pytest.fixture(scope="module")
def scaled_loras(tiny_base, tmp_path_factory) -> dict:
    from fluxsr_cli.model.tiny import save_tiny_checkpoint, save_tiny_community

    root = tmp_path_factory.mktemp("alpha")
    return {"fluxsr": save_tiny_checkpoint(root / "fluxsr", tiny_base, rank=LORA_RANK, alpha=LORA_ALPHA),
            "community": save_tiny_community(root / "community", alpha=LORA_ALPHA)}


@pytest.mark.parametrize("fmt", ["fluxsr", "community"])
def test_fused_weight_is_w_plus_alpha_over_r_times_b_a(fmt, scaled_loras, tiny_base):
    """W' = W + (alpha / r) B A, computed by hand from the file's A and B, for every adapted layer."""
    from safetensors.torch import load_file

    c = ck.read_checkpoint(scaled_loras[fmt])
    base = dict(loading.load_transformer(tiny_base, torch.float32).state_dict())
    fused = loading.load_transformer(tiny_base, torch.float32)
    loading.apply_lora(fused, c.lora_file, fuse=True)
    lora = load_file(str(c.lora_file))
    layers = sorted(k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in lora
                    if k.endswith(".lora_A.weight"))
    assert len(layers) == 10  # to_q, to_k, to_v, to_out.0 of the double block, to_q, to_k, to_v of 2 single ones
    assert (fmt == "community") == any(k.endswith(".alpha") for k in lora)  # fluxsr: alpha in the metadata
    for layer in layers:
        a, b = lora[f"transformer.{layer}.lora_A.weight"], lora[f"transformer.{layer}.lora_B.weight"]
        assert a.shape[0] == LORA_RANK and (b @ a).abs().max() > 1e-3
        want = base[f"{layer}.weight"] + (LORA_ALPHA / LORA_RANK) * (b @ a)
        torch.testing.assert_close(fused.get_submodule(layer).weight, want, atol=1e-6, rtol=1e-6)
    untouched = {k: v for k, v in fused.state_dict().items() if k.removesuffix(".weight") not in layers}
    assert all(torch.equal(v, base[k]) for k, v in untouched.items())
