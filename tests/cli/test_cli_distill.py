"""`fluxsr distill` and `fluxsr distill export` through Typer's CliRunner on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def _toml(tmp_path, pairs, base):
    path = tmp_path / "ftd.toml"
    path.write_text(f'[pairs]\noutput = "{pairs}"\n\n[distill]\ndata = "{pairs}"\noutput_dir = "{tmp_path / "run"}"\n'
                    f'base_model = "{base}"\nlora_rank = 2\nlambda_tv = 0.0\ncrop_size = 16\nbatch_size = 2\n'
                    'max_steps = 2\ncheckpoint_every = 1\nvalidate_every = 2\nval_count = 1\ntrackers = []\n'
                    'num_workers = 0\ncpu = true\nexport_on_finish = false\n')
    return path


def test_distill_trains_resumes_and_exports(pairs, tiny_base, tmp_path):
    config = _toml(tmp_path, pairs, tiny_base)
    result = runner.invoke(app, ["distill", "--config", str(config), "--set", "lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert "held-out one-step latent error" in result.output
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
