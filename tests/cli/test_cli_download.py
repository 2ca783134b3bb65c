"""`fluxsr download` through Typer's CliRunner: a local Hub cache offline, and a fake Hub online."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fluxsr_cli.cli import app
from tests.conftest import HUB_BASE, HUB_MODEL


def run(*args: str):
    return CliRunner().invoke(app, ["download", *args], env={"COLUMNS": "200"})


def test_dry_run_offline_lists_the_files_and_sizes_from_the_cache(offline_hub):
    from huggingface_hub import snapshot_download

    from fluxsr_cli.model.download import format_bytes

    result = run("--model", HUB_MODEL, "--dry-run", "--offline")
    assert result.exit_code == 0, result.output
    base = Path(snapshot_download(HUB_BASE, local_files_only=True))
    for path in ("transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
                 "model_index.json"):
        size = format_bytes((base / path).stat().st_size)
        assert any(path in line and size in line and "cached" in line for line in result.output.splitlines()), path
    assert "lora.safetensors" in result.output and "to download 0 B" in result.output
    assert "dry run: nothing downloaded" in result.output


def test_offline_with_files_missing_is_one_line(offline_hub):
    result = run("--teacher", "--base", HUB_BASE, "--offline")  # the tiny base has no text encoders
    assert result.exit_code == 3
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "offline mode is on and 5 files are not in the cache" in error[0]
    for pattern in ("scheduler/*", "text_encoder/*", "text_encoder_2/*", "tokenizer/*", "tokenizer_2/*"):
        assert any(pattern in line and "missing" in line for line in result.output.splitlines()), pattern


def test_download_fetches_then_finds_everything_cached(served_hub):
    first = run("--model", "org/ckpt")
    assert first.exit_code == 0, first.output
    assert "downloaded 8 files" in first.output  # 3 checkpoint files, model_index.json, 2 x (config + weights)
    again = run("--model", "org/ckpt")
    assert again.exit_code == 0 and "nothing to download" in again.output


def test_a_disk_too_small_is_refused_in_one_line_with_nothing_fetched(served_hub, monkeypatch):
    from fluxsr_cli.model import download as dl

    monkeypatch.setattr(dl, "free_space", lambda path: 1000)  # the free-space figure, injected
    for extra in ((), ("--dry-run",)):
        served_hub.requests.clear()
        result = run("--model", "org/ckpt", *extra)
        assert result.exit_code == 4, result.output
        error = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "1.0 kB free" in error[0] and "HF_HOME" in error[0]
        plan_read = f"/org/ckpt/resolve/{served_hub.commit('org/ckpt')}/fluxsr.json"  # the base's name
        assert set(served_hub.file_requests()) == {plan_read}


def test_a_gated_base_is_refused_before_any_file(served_hub):
    served_hub.gated.add("org/base")
    served_hub.requests.clear()
    result = run("--model", "org/ckpt")
    assert result.exit_code == 3
    assert "org/base: gated model and you are not logged in" in result.output
    plan_read = f"/org/ckpt/resolve/{served_hub.commit('org/ckpt')}/fluxsr.json"  # the plan's read of the base's name
    assert set(served_hub.file_requests()) == {plan_read}
