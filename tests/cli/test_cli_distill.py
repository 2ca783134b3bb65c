"""`fluxsr distill` and `fluxsr distill export` through Typer's CliRunner on real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fluxsr_cli.atomic import parse_temporary
from fluxsr_cli.cli import app
from fluxsr_cli.train.checkpoints import list_checkpoints
from tests.blocked_writer import REPO, blocked_writer, posix_only
from tests.train.distill_data import ensure_reader, make_pairs

ensure_reader()
runner = CliRunner()


@pytest.fixture(scope="module")
def pairs(tiny_base, tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs") / "data", tiny_base, n=6, size=32)


@pytest.fixture(scope="module")
def trained_run(pairs, tiny_base, tmp_path_factory):
    """A run of 2 steps with a validation grid at step 2, trained once for this module's tests."""
    root = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["distill", "--config", str(_toml(root, pairs, tiny_base)), "--set", "lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert "held-out one-step latent error" in result.output
    assert (root / "run" / "validation" / "step-0000002.png").is_file()
    return root / "run"


def _toml(tmp_path, pairs, base):
    path = tmp_path / "ftd.toml"
    path.write_text(f'[pairs]\noutput = "{pairs}"\n\n[distill]\ndata = "{pairs}"\noutput_dir = "{tmp_path / "run"}"\n'
                    f'base_model = "{base}"\nlora_rank = 2\nlambda_tv = 0.0\ncrop_size = 16\nbatch_size = 2\n'
                    'max_steps = 2\ncheckpoint_every = 1\nvalidate_every = 2\nval_count = 1\ntrackers = []\n'
                    'num_workers = 0\ncpu = true\nexport_on_finish = false\n')
    return path


def test_distill_trains_resumes_and_exports(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")  # trained for 2 steps (and checked) by the fixture
    config = tmp_path / "ftd.toml"  # the fixture's settings, in this copy
    config.write_text((trained_run.parent / "ftd.toml").read_text().replace(str(trained_run), str(tmp_path / "run")))
    assert (tmp_path / "run" / "checkpoints" / "step-0000002").is_dir()
    again = runner.invoke(app, ["distill", "--config", str(config), "--set", "max_steps=3", "--resume", "latest"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "run" / "checkpoints" / "step-0000003").is_dir()
    out = tmp_path / "ckpt"
    exported = runner.invoke(app, ["distill", "export", str(tmp_path / "run"), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    info = json.loads((out / "fluxsr.json").read_text())
    assert info["extra"]["trained_steps"] == 3 and info["lora_rank"] == 2
    refused = runner.invoke(app, ["distill", "export", str(tmp_path / "run"), "-o", str(out)])
    assert refused.exit_code == 3 and "--overwrite" in refused.output


def test_errors_are_one_line(pairs, tiny_base, tmp_path):
    config = _toml(tmp_path, pairs, tiny_base)
    bad = runner.invoke(app, ["distill", "--config", str(config), "--set", "t_l=2"])
    assert bad.exit_code == 2 and "t_l" in bad.output
    missing = runner.invoke(app, ["distill", "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "not found" in missing.output
    unknown = runner.invoke(app, ["distill", "--config", str(config), "--set", "lora_rnk=3"])
    assert unknown.exit_code == 2 and "lora_rnk" in unknown.output
    not_run = runner.invoke(app, ["distill", "export", str(tmp_path), "-o", str(tmp_path / "x")])
    assert not_run.exit_code == 2 and "distill.toml" in not_run.output


@posix_only
def test_a_run_killed_while_checkpointing_resumes_without_its_temporary(pairs, tiny_base, tmp_path):
    config = _toml(tmp_path, pairs, tiny_base)
    checkpoints = tmp_path / "run" / "checkpoints"
    child = f"from fluxsr_cli.cli import app\napp(['distill', '--config', {str(config)!r}])\n"
    with blocked_writer(child, 2, tmp_path / "child", writer="accelerate:Accelerator.save_state") as temp:
        assert temp.parent == checkpoints and parse_temporary(temp.name).label == "step-0000002"
    assert temp.is_dir() and [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-0000001"]
    again = runner.invoke(app, ["distill", "--config", str(config), "--resume", "latest"])
    assert again.exit_code == 0, again.output
    assert "temporaries of killed runs removed: 1" in again.output
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000001", "step-0000002"]
    assert not [p for p in (tmp_path / "run").rglob(".*")]
    # an export whose process died half-way: the next export of that folder removes its temporary
    out = tmp_path / "ckpt"
    died = f"from fluxsr_cli.atomic import make_temporary\nmake_temporary({str(out)!r}, folder=True)"
    subprocess.run([sys.executable, "-c", died], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert len(list(tmp_path.glob(".ckpt.fluxsr-part.*"))) == 1
    exported = runner.invoke(app, ["distill", "export", str(tmp_path / "run"), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    assert not list(tmp_path.glob(".*")) and (out / "fluxsr.json").is_file()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_export_writes_a_model_card_and_publishes_no_local_path(trained_run, tiny_base, pairs, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "ckpt"
    result = runner.invoke(app, ["distill", "export", str(trained_run), "-o", str(out),
                                 "--base-id", "black-forest-labs/FLUX.1-dev"])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "black-forest-labs/FLUX.1-dev" and card.data.license_name == (
        "flux-1-dev-non-commercial-license")
    assert "## Training" in card.text and "| optimizer steps | 2 |" in card.text
    assert "(images/validation.png)" in card.text
    assert (out / "images" / "validation.png").read_bytes() == (trained_run / "validation" / "step-0000002.png").read_bytes()
    info = json.loads((out / "fluxsr.json").read_text())
    assert info["base_model"] == "black-forest-labs/FLUX.1-dev" and "data" not in info["extra"]
    for local in (str(tiny_base), str(pairs), str(trained_run)):
        assert local not in (out / "fluxsr.json").read_text() and local not in (out / "README.md").read_text()


def test_export_without_a_hub_id_keeps_the_local_base_and_refuses_to_publish(trained_run, tiny_base, tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "ckpt"
    local = runner.invoke(app, ["distill", "export", str(trained_run), "-o", str(out)])
    assert local.exit_code == 0, local.output
    assert json.loads((out / "fluxsr.json").read_text())["base_model"] == str(tiny_base)  # loads on this machine
    assert str(tiny_base) not in (out / "README.md").read_text()

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was called")

    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", no_hub)
    refused = runner.invoke(app, ["distill", "export", str(trained_run), "-o", str(tmp_path / "pub"),
                                  "--push-to-hub", "me/x"])
    assert refused.exit_code == 2 and "--base-id" in _error_lines(refused.output)[0]
    assert not (tmp_path / "pub").exists()


def test_push_uploads_the_exported_folder_as_one_commit(trained_run, tmp_path, monkeypatch):
    from huggingface_hub import CommitInfo, HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], {"files": sorted(
            p.relative_to(kwargs["folder_path"]).as_posix() for p in Path(kwargs["folder_path"]).rglob("*")
            if p.is_file())}))
        return CommitInfo(commit_url="https://huggingface.co/me/x/commit/abc", commit_message="m",
                          commit_description="", oid="abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "ckpt"
    result = runner.invoke(app, ["distill", "export", str(trained_run), "-o", str(out), "--base-id",
                                 "black-forest-labs/FLUX.1-dev", "--push-to-hub", "me/x", "--private"])
    assert result.exit_code == 0, result.output
    assert "uploaded to https://huggingface.co/me/x/commit/abc" in result.output
    assert calls[0] == ("create_repo", "me/x", {"private": True, "exist_ok": True})
    assert calls[1] == ("upload_folder", "me/x", {"files": sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())})
    assert "README.md" in calls[1][2]["files"] and "lora.safetensors" in calls[1][2]["files"]
    assert "--model me/x" in (out / "README.md").read_text()


@pytest.mark.parametrize(("setup", "expected"), [
    ("offline", "offline mode is on"),
    ("logged out", "not logged in"),
    ("read token", "your token may not write there"),
])
def test_a_failed_push_is_one_line_and_never_success(trained_run, tmp_path, monkeypatch, setup, expected):
    import huggingface_hub.constants as constants

    from tests.fake_hub import FakeHub

    out = tmp_path / "ckpt"
    args = ["distill", "export", str(trained_run), "-o", str(out), "--base-id", "black-forest-labs/FLUX.1-dev",
            "--push-to-hub", "me/x"]
    hub = FakeHub(write_status=401 if setup == "logged out" else 403)
    if setup == "offline":  # huggingface_hub's own client, which refuses to connect when offline
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setenv("HF_TOKEN", "hf_write")
        result = runner.invoke(app, args)
    else:
        with hub.serving(monkeypatch, tmp_path / "hub", token=None if setup == "logged out" else "hf_read_only"):
            result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    error = _error_lines(result.output)
    assert len(error) == 1 and expected in error[0] and "nothing was committed to me/x" in error[0]
    assert "uploaded to" not in result.output
    assert (out / "README.md").is_file()  # the export stays, for a later upload
    assert setup == "offline" or hub.requests  # the huggingface_hub call was made, and answered
