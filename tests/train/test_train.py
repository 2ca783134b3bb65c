"""The distillation loop on the tiny stack: resumes exactly, checkpoints atomically, exports (learning: test_learning.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fluxsr_cli.errors import ConfigError, InputError
from fluxsr_cli.train.checkpoints import export_checkpoint, list_checkpoints
from fluxsr_cli.train.config import DistillConfig, load_distill_config
from fluxsr_cli.train.loop import distill
from fluxsr_cli.train.step import Student, batch_indices
from tests.train.distill_data import ensure_reader, make_pairs

ensure_reader()


@pytest.fixture(scope="module")
def pairs(tiny_base, tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs") / "data", tiny_base, n=10, size=32)


def _config(data, base, out, **kw) -> DistillConfig:
    settings = dict(data=data, output_dir=out, base_model=str(base), lora_rank=4, lora_alpha=4.0, lambda_tv=0.0,
                    lr=1e-3, warmup_steps=2, lr_schedule="cosine", batch_size=2, max_steps=6, crop_size=16,
                    gradient_checkpointing=True, checkpoint_every=3, keep_last=2, validate_every=0, val_count=2,
                    trackers=(), num_workers=0, cpu=True, export_on_finish=False)
    settings.update(kw)
    return DistillConfig(**settings)


def test_resumed_run_continues_the_same_loss_curve(pairs, tiny_base, tmp_path):
    full = distill(_config(pairs, tiny_base, tmp_path / "full"))
    cfg = _config(pairs, tiny_base, tmp_path / "killed")

    def kill_after_step_4(stage, done, total):
        if done == 4:
            raise KeyboardInterrupt  # the process dies after step 4; the last checkpoint is step 3

    with pytest.raises(KeyboardInterrupt):
        distill(cfg, progress=kill_after_step_4)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step-0000003"]
    resumed = distill(cfg, resume="latest")
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    for key in ("loss", "ftd", "rec", "adl", "lr"):
        want = [r[key] for r in full.history[3:]]
        got = [r[key] for r in resumed.history]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9), key
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step-0000003", "step-0000006"]


def test_checkpoints_are_pruned_atomic_and_hold_only_the_lora(pairs, tiny_base, tmp_path):
    cfg = _config(pairs, tiny_base, tmp_path / "run", max_steps=4, checkpoint_every=1, keep_last=2,
                  trackers=("tensorboard",), log_every=1)
    distill(cfg)
    names = [p.name for p in list_checkpoints(cfg.output_dir)]
    assert names == ["step-0000003", "step-0000004"]
    assert not list((cfg.output_dir / "checkpoints").glob(".*"))  # no temporary folder left
    files = {p.name for p in (cfg.output_dir / "checkpoints" / names[-1]).iterdir()}
    assert "lora.safetensors" in files and "optimizer.bin" in files and "trainer_state.json" in files
    assert not any(f.startswith("model") for f in files)  # no frozen base weights in the checkpoints
    assert list((cfg.output_dir / "logs").rglob("events.out.tfevents.*"))
    assert load_distill_config(cfg.output_dir / "distill.toml") == cfg
    with pytest.raises(InputError, match="--resume latest"):
        distill(cfg)  # never trains over an earlier run


def test_export_reproduces_the_in_training_one_step_output(pairs, tiny_base, tmp_path):
    from fluxsr_cli.train.dataset import PairDataset
    from fluxsr_cli.upscale.options import ModelOptions
    from fluxsr_cli.upscale.restore import load_upscaler

    cfg = _config(pairs, tiny_base, tmp_path / "run", max_steps=3, lr=1e-2, export_on_finish=True,
                  validate_every=3, guidance=2.0, t_l=0.3)
    result = distill(cfg)
    assert result.exported == cfg.output_dir / "final"
    assert (cfg.output_dir / "validation" / "step-0000003.png").is_file()
    z_l = PairDataset(pairs)[9]["z_l"][None]
    with torch.no_grad():
        v = result.student(z_l, torch.full((1,), 0.3))
    trained = z_l - 0.3 * v
    upscaler = load_upscaler(ModelOptions(model=str(result.exported), device="cpu", dtype="fp32"))
    assert upscaler.t_l == 0.3 and upscaler.cond.guidance == 2.0
    exported = upscaler.restore_latent(z_l)
    assert torch.allclose(exported, trained, atol=1e-5)
    # the training moved the model: the base alone gives another output
    base = Student(upscaler.transformer, upscaler.cond.prompt_embeds, upscaler.cond.pooled_prompt_embeds, 2.0,
                   torch.float32)
    from fluxsr_cli.model.loading import load_transformer

    base.transformer = load_transformer(tiny_base, torch.float32)
    with torch.no_grad():
        assert (z_l - 0.3 * base(z_l, torch.full((1,), 0.3)) - trained).abs().max() > 1e-4
    again = export_checkpoint(cfg.output_dir, tmp_path / "ckpt")
    assert json.loads((again / "fluxsr.json").read_text())["extra"]["trained_steps"] == 3
    with pytest.raises(Exception, match="exists"):
        export_checkpoint(cfg.output_dir, tmp_path / "ckpt")


def test_full_finetune_exports_a_transformer_that_reproduces_its_student(pairs, tiny_base, tmp_path):
    """finetune = "full": every weight trains, the export is a whole ``transformer/``, and the
    upscaler that loads it gives the trained student's one-step output."""
    from fluxsr_cli.model.loading import load_transformer
    from fluxsr_cli.train.dataset import PairDataset
    from fluxsr_cli.upscale.options import ModelOptions
    from fluxsr_cli.upscale.restore import load_upscaler

    cfg = _config(pairs, tiny_base, tmp_path / "run", finetune="full", max_steps=2, lr=1e-3, checkpoint_every=2,
                  export_on_finish=True, guidance=2.0, t_l=0.3)
    result = distill(cfg)
    assert (result.exported / "transformer" / "config.json").is_file()
    assert not (result.exported / "lora.safetensors").exists()
    z_l = PairDataset(pairs)[9]["z_l"][None]
    with torch.no_grad():
        trained = z_l - 0.3 * result.student(z_l, torch.full((1,), 0.3))
    upscaler = load_upscaler(ModelOptions(model=str(result.exported), device="cpu", dtype="fp32"))
    assert upscaler.info.lora_rank is None and upscaler.t_l == 0.3 and upscaler.cond.guidance == 2.0
    torch.testing.assert_close(upscaler.restore_latent(z_l), trained, atol=1e-5, rtol=0)
    base = Student(load_transformer(tiny_base, torch.float32), upscaler.cond.prompt_embeds,
                   upscaler.cond.pooled_prompt_embeds, 2.0, torch.float32)
    with torch.no_grad():
        assert (z_l - 0.3 * base(z_l, torch.full((1,), 0.3)) - trained).abs().max() > 1e-4  # it trained


def test_tv_lpips_and_adl_terms_run_in_the_loop(pairs, tiny_base, tmp_path):
    from tests.lpips_weights import lpips_cache

    cfg = _config(pairs, tiny_base, tmp_path / "run", max_steps=2, lambda_tv=0.5, crop_size=32,
                  lpips_cache=lpips_cache(), adl_blocks=("double:0", "single:-1"))
    result = distill(cfg)
    last = result.history[-1]
    assert last["tv_lpips"] > 0 and 0 < last["adl"] <= 1
    assert last["loss"] == pytest.approx(last["ftd"] + (last["mse"] + 0.5 * last["tv_lpips"]) + 0.01 * last["adl"],
                                         rel=1e-4)


def test_missing_lpips_weights_name_the_distill_setting(pairs, tiny_base, tmp_path, monkeypatch):
    from fluxsr_cli.errors import CheckpointError

    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    cfg = _config(pairs, tiny_base, tmp_path / "run", max_steps=1, lambda_tv=0.5, crop_size=32,
                  lpips_cache=tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"not in .*empty and offline.*set lpips_cache in \[distill\]") as e:
        distill(cfg)
    assert "eval --weights-dir" not in str(e.value)


def test_data_order_is_a_permutation_per_epoch_and_disjoint_across_processes():
    seen = [i for step in range(5) for i in batch_indices(10, 2, step, 0, 1, seed=7)]
    assert sorted(seen) == list(range(10))
    ranks = [set(batch_indices(12, 3, 0, r, 2, seed=1)) for r in range(2)]
    assert not ranks[0] & ranks[1]


def test_config_validation_and_overrides(tmp_path):
    cfg = load_distill_config(None, ["t_l=0.3", "adl_blocks=double:0,single:1", "lora_targets=to_q,to_k"])
    assert cfg.t_l == 0.3 and cfg.adl_blocks == ("double:0", "single:1") and cfg.lora_targets == ("to_q", "to_k")
    for bad in (["t_l=1.0"], ["crop_size=100"], ["lambda_adl=-1"], ["trackers=nope"], ["batch_size=0"]):
        with pytest.raises(ConfigError):
            load_distill_config(None, bad)
    assert dataclasses.replace(cfg, finetune="full", lora_rank=0).finetune == "full"


def test_missing_data_and_too_few_pairs(pairs, tiny_base, tmp_path):
    with pytest.raises(InputError, match="pairs"):
        distill(_config(tmp_path / "nothing", tiny_base, tmp_path / "a"))
    with pytest.raises(ConfigError, match="val_count"):
        distill(_config(pairs, tiny_base, tmp_path / "b", val_count=10))
