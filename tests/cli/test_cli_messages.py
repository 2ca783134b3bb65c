"""Library messages reach the terminal as they are: brackets, markup-like tags and emoji codes intact.

Rich reads ``[eval]``, ``[x]`` or ``[bold]`` in a string as markup and drops it, and ``:smile:`` as an
emoji; a message like "pip install 'fluxsr[eval]'" then loses the very part that says what to do.
Each way a library message reaches the user is fed a message full of them, through the real CLI.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import fluxsr_cli.cli.batch
import fluxsr_cli.upscale.restore
from fluxsr_cli.cli import app
from fluxsr_cli.cli.common import handle_errors, make_console, note, warn
from fluxsr_cli.errors import InputError
from fluxsr_cli.progress import no_progress

MESSAGE = "install the [eval] extra: pip install 'fluxsr[eval]'; set [x] in photo[1].png, not [bold]x[/bold] :smile:"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _invoke(*args: str, **kwargs):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"}, **kwargs)


def _photo(path, size: int = 48) -> None:
    from skimage import data

    Image.fromarray(data.astronaut()[100 : 100 + size, 200 : 200 + size]).save(path)


@pytest.fixture
def no_pyiqa(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # `import pyiqa` now raises ImportError


def test_handle_errors_prints_the_message_verbatim():
    cmd = typer.Typer()

    @cmd.command()
    @handle_errors
    def boom() -> None:
        raise InputError(MESSAGE)

    r = CliRunner().invoke(cmd, [], env={"COLUMNS": "400"})
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {MESSAGE}"


def test_notes_and_warnings_print_the_message_verbatim(capsys):
    note(MESSAGE)
    warn(MESSAGE)
    assert capsys.readouterr().err.splitlines() == [f"note: {MESSAGE}", f"warning: {MESSAGE}"]


def test_eval_error_keeps_the_extra_and_gives_no_wrong_advice(tmp_path, no_pyiqa):
    pred, gt = tmp_path / "pred[x]", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    _photo(pred / "a.png")
    _photo(gt / "a.png")
    r = _invoke("eval", str(pred), "--gt", str(gt), "--metrics", "musiq")
    assert r.exit_code == 2, r.output
    assert "pip install 'fluxsr[eval]'" in r.stderr and "install the [eval] extra" in r.stderr
    assert "--gt" not in r.stderr  # --gt was given: no advice to give it
    r = _invoke("eval", str(tmp_path / "nowhere[x]"))
    assert r.exit_code == 2 and f"{tmp_path / 'nowhere[x]'}: prediction folder not found" in r.stderr


def test_eval_unavailable_reasons_and_notes_keep_their_brackets(tmp_path, monkeypatch, no_pyiqa):
    pred, gt, weights = tmp_path / "pred", tmp_path / "gt", tmp_path / "weights[x]"
    pred.mkdir()
    gt.mkdir()
    _photo(pred / "photo[1].png")
    _photo(gt / "photo[1].png")
    _photo(pred / "extra[eval].png")  # no ground truth: a note
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    r = _invoke("eval", str(pred), "--gt", str(gt), "--metrics", "psnr,lpips-alex,lpips-vgg,dists,musiq",
                "--weights-dir", str(weights))
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    learned = [line for line in lines if line.startswith("unavailable lpips-alex, lpips-vgg, dists: ")]
    assert len(learned) == 1 and f"5 file(s) not in {weights} and offline" in learned[0]  # one line for all
    assert not any(line.startswith(("unavailable lpips-vgg", "unavailable dists")) for line in lines)
    musiq = [line for line in lines if line.startswith("unavailable musiq: ")]
    assert len(musiq) == 1 and "install the [eval] extra: pip install 'fluxsr[eval]'" in musiq[0]
    assert f"extra[eval]: no ground truth named extra[eval].* in {gt}; full-reference metrics skipped" in lines
    assert "photo[1]" not in r.stderr  # scored, no note


class FailingUpscaler:
    def cost(self, outputs, options):
        import torch

        from fluxsr_cli.model.architectures import TINY_TRANSFORMER
        from fluxsr_cli.upscale.estimate import estimate

        return estimate(outputs, 1024, None, TINY_TRANSFORMER, 8, torch.device("cpu"))

    def upscale_array(self, rgb: np.ndarray, options, progress=no_progress, notice=None) -> np.ndarray:
        raise InputError(MESSAGE)


@pytest.mark.parametrize("terminal", [False, True])
def test_batch_failures_keep_their_brackets(tmp_path, monkeypatch, terminal):
    src = tmp_path / "in[x]"
    src.mkdir()
    _photo(src / "photo[1].png")
    monkeypatch.setattr(fluxsr_cli.upscale.restore, "load_upscaler",
                        lambda options, progress=no_progress, notice=None: FailingUpscaler())
    if terminal:  # the table form; the same console settings as the real one
        monkeypatch.setattr(fluxsr_cli.cli.batch, "out", make_console(force_terminal=True, width=400))
    r = _invoke("batch", str(src), "-o", str(tmp_path / "out[eval]"))
    assert r.exit_code == 1, r.output
    stdout = ANSI.sub("", r.stdout)
    if terminal:
        row = next(line for line in stdout.splitlines() if "photo[1].png" in line)
        assert MESSAGE in row and "failed" in row
    else:  # a log: one greppable line per file
        assert f"failed: photo[1].png: {MESSAGE}" in stdout.splitlines()


def test_degrade_skips_keep_their_brackets(tmp_path):
    hq = tmp_path / "hq[x]"
    hq.mkdir()
    _photo(hq / "good.png", 64)
    (hq / "bad[eval].png").write_bytes(b"not a png")
    r = _invoke("degrade", str(hq), "-o", str(tmp_path / "lq"))
    assert r.exit_code == 1, r.output
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped: bad[eval].png: ")
    assert f"{hq / 'bad[eval].png'}: not an image" in skipped[0]
