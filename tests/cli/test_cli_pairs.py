"""`fluxsr pairs --config ftd.toml` through Typer's CliRunner on a tiny random FLUX teacher."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from tests.blocked_writer import blocked_writer, listing, posix_only

runner = CliRunner()


@pytest.fixture(scope="module")
def ftd_toml(tmp_path_factory) -> Path:
    from fluxsr_cli.train.tiny_teacher import save_tiny_teacher, synthetic_prompts

    root = tmp_path_factory.mktemp("cli")
    teacher = save_tiny_teacher(root / "teacher")
    (root / "prompts.json").write_text(json.dumps(synthetic_prompts(3, seed=1)))
    toml = root / "ftd.toml"
    toml.write_text(
        "[pairs]\n"
        f'teacher = "{teacher}"\n'
        f'prompts = "{root / "prompts.json"}"\n'
        "num_pairs = 2\nresolution = 32\nsteps = 2\nmax_sequence_length = 8\n"
        f'output = "{root / "data"}"\n'
        "\n[distill]\n# filled by the trainer\n"
    )
    return toml


def test_pairs_command_writes_and_resumes(ftd_toml):
    result = runner.invoke(app, ["pairs", "--config", str(ftd_toml), "--set", "seed=3"])
    assert result.exit_code == 0, result.output
    assert "FLUX.1 [dev] Non-Commercial License" in result.output
    assert "generated now" in result.output and "items in manifest.jsonl" in result.output
    data = ftd_toml.parent / "data"
    lines = (data / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]
    assert json.loads(lines[0])["teacher"]["steps"] == 2
    assert (data / "embeddings.safetensors").is_file() and (data / "hq" / "000001.png").is_file()

    again = runner.invoke(app, ["pairs", "--config", str(ftd_toml), "--set", "seed=3"])
    assert again.exit_code == 0, again.output
    assert "already finished" in again.output
    assert (data / "manifest.jsonl").read_text().splitlines() == lines

    other = runner.invoke(app, ["pairs", "--config", str(ftd_toml), "--set", "seed=4"])
    assert other.exit_code == 2
    assert "seed = 3" in other.output and "Traceback" not in other.output


@pytest.mark.parametrize(("args", "words"), [
    (["--set", "steps=0"], "steps = 0 must be at least 1"),
    (["--set", "resolution=100"], "multiple of 16"),
    (["--offload", "disk"], "offload = 'disk'"),
    (["--set", "prompts=/nonexistent/prompts.txt"], "file not found"),
    (["--set", "bogus=1"], "unknown setting"),
])
def test_bad_settings_are_one_line_errors(ftd_toml, tmp_path, args, words):
    result = runner.invoke(app, ["pairs", "--config", str(ftd_toml), "--set", f"output={tmp_path / 'out'}", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.output
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["pairs", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "config file not found" in result.output


@posix_only
def test_a_killed_run_leaves_only_its_outputs_after_a_rerun(ftd_toml, tmp_path, monkeypatch):
    args = ["pairs", "--config", str(ftd_toml), "--set", "output=data"]  # relative: the same pairs.toml
    (tmp_path / "ref").mkdir()
    monkeypatch.chdir(tmp_path / "ref")
    assert runner.invoke(app, args).exit_code == 0
    killed = tmp_path / "killed"
    with blocked_writer(f"from fluxsr_cli.cli import app\napp({args!r})\n", 3, killed) as temp:
        assert temp.parent == killed / "data" / "hq"  # item 0 is finished, item 1's HQ image half-written
    monkeypatch.chdir(killed)
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert re.search(r"already finished\s*│\s*1\b", rerun.output), rerun.output
    assert re.search(r"temporaries of killed runs removed\s*│\s*1\b", rerun.output), rerun.output
    assert listing(killed / "data") == listing(tmp_path / "ref" / "data")
