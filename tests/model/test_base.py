"""What is fetched, and when: the device is decided from the transformer's config alone (a machine that
cannot run the model says so before any weights move), a cache holding only part of a repo is not
taken for all of it, and a checkpoint with its own transformer fetches only the base's VAE."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import torch

from fluxsr_cli.errors import CheckpointError, ResourceError
from fluxsr_cli.model import hub
from fluxsr_cli.model.architectures import FLUX_DEV_TRANSFORMER
from fluxsr_cli.model.hub import BASE_FILES, DEFAULT_BASE, incomplete
from fluxsr_cli.model.tiny import add_to_hub_cache, save_tiny_checkpoint
from fluxsr_cli.upscale.options import ModelOptions
from fluxsr_cli.upscale.restore import load_upscaler

BIG = "fluxsr-test/big-flux"


@pytest.fixture()
def fetched(monkeypatch):
    """Every snapshot_download call: (repo, allow_patterns, local_files_only)."""
    calls = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("allow_patterns"), kwargs.get("local_files_only", False)))
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return calls


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_incomplete_names_what_a_folder_lacks(tiny_base, tmp_path):
    assert incomplete(tiny_base, BASE_FILES) is None
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "spiece.model").write_bytes(b"x")
    assert incomplete(tmp_path, ["transformer/*"]) == "transformer/ weights"
    assert incomplete(tmp_path, ["tokenizer/*"]) is None  # no config.json: nothing else to check
    assert incomplete(tmp_path, ["vae/*"]) == "vae/"
    assert incomplete(tmp_path, ["model_index.json"]) == "model_index.json"
    (tmp_path / "transformer" / "w.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "w-1.safetensors", "b": "w-2.safetensors"}}))
    (tmp_path / "transformer" / "w-1.safetensors").write_bytes(b"x")
    assert incomplete(tmp_path, ["transformer/*"]) == "transformer/w-2.safetensors"


def test_a_config_only_cache_entry_is_not_taken_for_the_model(tiny_base, tmp_path, offline_hub):
    """An earlier run fetched transformer/config.json alone: the full resolve must not trust that hit."""
    partial = tmp_path / "partial"
    (partial / "transformer").mkdir(parents=True)
    (partial / "transformer" / "config.json").write_text((tiny_base / "transformer" / "config.json").read_text())
    add_to_hub_cache(offline_hub, "fluxsr-test/partial", partial)
    assert hub.resolve("fluxsr-test/partial", allow_patterns=["transformer/config.json"], complete=True)
    with pytest.raises(CheckpointError, match="only partly in the local Hugging Face cache .model_index.json missing"):
        hub.resolve("fluxsr-test/partial", allow_patterns=BASE_FILES, offline=True, complete=True)


def test_no_gpu_is_said_before_the_default_base_is_touched(tiny_base, tmp_path, fetched, no_gpu, offline_hub):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", DEFAULT_BASE)
    with pytest.raises(ResourceError, match="FLUX.1-dev: the 11.8B-parameter FLUX transformer needs a CUDA GPU"):
        load_upscaler(ModelOptions(model=str(ckpt), offline=True))
    assert [c for c in fetched if c[0] == DEFAULT_BASE] == []  # the packaged FLUX.1-dev config decided


def test_no_gpu_is_said_after_fetching_config_json_alone(tiny_base, tmp_path, fetched, no_gpu, offline_hub):
    big = tmp_path / "big"
    (big / "transformer").mkdir(parents=True)
    (big / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel",
                                                                 **FLUX_DEV_TRANSFORMER}))
    (big / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"24 GB, in a real repo")
    add_to_hub_cache(offline_hub, BIG, big)
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", BIG)
    with pytest.raises(ResourceError, match="--device cpu"):
        load_upscaler(ModelOptions(model=str(ckpt), offline=True))
    assert [patterns for repo, patterns, _ in fetched if repo == BIG] == [["transformer/config.json"]]


def test_a_checkpoint_with_its_own_transformer_fetches_only_the_bases_vae(tiny_base, tmp_path, fetched,
                                                                         offline_hub):
    from fluxsr_cli.model.checkpoint import CheckpointInfo, save_checkpoint
    from fluxsr_cli.model.loading import load_transformer
    from fluxsr_cli.model.tiny import random_embeddings
    from tests.conftest import HUB_BASE

    full = save_checkpoint(tmp_path / "full", CheckpointInfo(base_model=HUB_BASE),
                           random_embeddings({"joint_attention_dim": 32, "pooled_projection_dim": 16}, 8),
                           transformer=load_transformer(tiny_base, torch.float32))
    up = load_upscaler(ModelOptions(model=str(full), device="cpu", offline=True))
    assert up.transformer is not None
    assert [patterns for repo, patterns, _ in fetched if repo == HUB_BASE] == [["model_index.json", "vae/*"]]


def test_the_fallback_vae_is_read_at_the_checkpoints_base_revision(tiny_base, tmp_path, monkeypatch):
    """A transformer file as the base: the VAE comes from the checkpoint's base repo at its pinned revision,
    the snapshot `fluxsr download` fetched (not main)."""
    from fluxsr_cli.model import base as base_lib

    seen = []

    def resolve(ref, revision=None, **kwargs):
        seen.append((ref, revision))
        return tiny_base

    monkeypatch.setattr(base_lib, "resolve", resolve)
    file_base = type("FileBase", (), {"file": tmp_path / "flux1-dev.safetensors", "offline": True})()
    base_lib.load_vae_for(file_base, None, "owner/base", torch.float32, fallback_revision="abc123")
    assert seen == [("owner/base", "abc123")]
