"""`fluxsr batch` through Typer's CliRunner on real and odd files, with a bicubic stand-in for the model.

The model is replaced at its one seam, ``fluxsr_cli.upscale.restore.load_upscaler``; the end-to-end run with
the tiny checkpoint lives with the restore tests.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import fluxsr_cli.upscale.restore
from fluxsr_cli.atomic import parse_temporary
from fluxsr_cli.cli import app
from fluxsr_cli.progress import no_progress
from tests.blocked_writer import blocked_writer, listing, posix_only
from tests.images.test_imageio import (
    make_16bit_grey,
    make_16bit_rgb,
    make_cmyk_jpeg,
    make_icc,
    make_la,
    make_palette,
    make_rgba,
    make_rotated_jpeg,
    make_truncated_jpeg,
    photo,
    srgb_icc,
)

runner = CliRunner()


class FakeUpscaler:
    """Bicubic at the requested scale, shaped like ``fluxsr_cli.upscale.restore.Upscaler``."""

    def __init__(self, options):
        self.options = options  # the ModelOptions it was loaded with
        self.calls = 0
        self.requests = []  # the UpscaleOptions of each image

    def cost(self, outputs, options):
        from fluxsr_cli.model.architectures import TINY_TRANSFORMER
        from fluxsr_cli.upscale.estimate import estimate

        return estimate(outputs, 1024, None, TINY_TRANSFORMER, 8, torch.device("cpu"))

    def upscale_array(self, rgb: np.ndarray, options, progress=no_progress, notice=None) -> np.ndarray:
        assert rgb.dtype == np.float32 and rgb.shape[2] == 3
        self.calls += 1
        self.requests.append(options)
        progress("tiles", 1, 1)
        s = options.scale
        return np.clip(cv2.resize(rgb, (rgb.shape[1] * s, rgb.shape[0] * s), interpolation=cv2.INTER_CUBIC), 0, 1)


@pytest.fixture
def loads(monkeypatch):
    """Every load_upscaler call's Upscaler, in order."""
    made: list[FakeUpscaler] = []

    def fake_load(options, progress=no_progress, notice=None):
        made.append(FakeUpscaler(options))
        return made[-1]

    monkeypatch.setattr(fluxsr_cli.upscale.restore, "load_upscaler", fake_load)
    return made


def summary(output: str) -> tuple[int, int, int]:
    """done, skipped, failed from the final table."""
    row = re.search(r"│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*[\d.]+ s", output)
    assert row, output
    return int(row[1]), int(row[2]), int(row[3])


def make_album(root: Path) -> Path:
    """Every kind of file the issue names, in a small folder tree."""
    (root / "raw" / "deep").mkdir(parents=True)
    Image.fromarray(photo("astronaut")).save(root / "astronaut.png")
    Image.fromarray(photo("chelsea")).save(root / "chat à l'été.jpg", quality=92)
    make_rgba(root / "logo rgba.png")
    make_la(root / "raw" / "la.png")
    make_palette(root / "raw" / "palette.png")
    make_16bit_rgb(root / "raw" / "deep" / "sixteen.png")
    make_16bit_rgb(root / "raw" / "deep" / "sixteen.tif")
    make_16bit_grey(root / "raw" / "deep" / "grey16.png")
    make_cmyk_jpeg(root / "raw" / "cmyk.jpg")
    make_rotated_jpeg(root / "rot6.jpg", 6)
    make_rotated_jpeg(root / "rot8.jpg", 8)
    make_icc(root / "icc.png")
    make_truncated_jpeg(root / "raw" / "cut.jpg")
    (root / "empty.png").write_bytes(b"")
    return root


def test_batch_of_odd_files_then_resume(tmp_path, loads):
    album = make_album(tmp_path / "album")
    out = tmp_path / "out"
    args = ["batch", str(album), "-o", str(out), "--recursive", "--report", str(tmp_path / "r.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # two bad files
    assert summary(result.stdout) == (12, 0, 2)
    assert "cut.jpg" in result.stdout and "truncated" in result.stdout and "empty file" in result.stdout
    lines = result.stdout.splitlines()  # not a terminal: one greppable line per file, never wrapped
    assert any(line.startswith("failed: raw/cut.jpg: ") and "truncated" in line for line in lines)
    assert len(loads) == 1 and loads[0].calls == 12  # one model for the whole batch

    def opened(rel: str) -> Image.Image:
        im = Image.open(out / rel)
        im.load()
        return im

    assert opened("astronaut.png").size == (192, 128)
    assert opened("chat à l'été.jpg").size == (192, 128)
    assert opened("logo rgba.png").mode == "RGBA"
    assert opened("raw/la.png").mode == "LA"
    assert opened("raw/palette.png").mode == "P"
    assert opened("raw/deep/grey16.png").mode.startswith("I;16")
    for name in ("sixteen.png", "sixteen.tif"):
        deep = cv2.imread(str(out / "raw" / "deep" / name), cv2.IMREAD_UNCHANGED)
        assert deep.dtype == np.uint16 and deep.shape == (128, 192, 3)
    assert opened("raw/cmyk.jpg").mode == "RGB"
    assert opened("rot6.jpg").size == opened("rot8.jpg").size == (128, 192)
    assert opened("rot6.jpg").getexif()[0x0112] == 1
    assert opened("icc.png").info["icc_profile"] == srgb_icc()
    assert not (out / "empty.png").exists() and not (out / "raw" / "cut.jpg").exists()

    report = json.loads((tmp_path / "r.json").read_text())
    status = {Path(f["src"]).relative_to(album).as_posix(): f["status"] for f in report["files"]}
    assert len(status) == 14 and status["raw/cut.jpg"] == status["empty.png"] == "failed"
    assert status["raw/deep/sixteen.tif"] == "done"
    cmyk = next(f for f in report["files"] if f["src"].endswith("cmyk.jpg"))
    assert any("CMYK" in n for n in cmyk["notes"])

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and summary(again.stdout) == (0, 12, 2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten

    clean = runner.invoke(app, [*args, "--exclude", "cut.jpg", "--exclude", "empty.*"])
    assert clean.exit_code == 0 and summary(clean.stdout) == (0, 12, 0)
    assert len(loads) == 2  # nothing pending: the model is not loaded


def test_existing_output_is_kept_and_overwrite_redoes_it(tmp_path, loads):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo("coffee")).save(src / "coffee.png")
    Image.fromarray(photo("camera")).save(src / "camera.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "coffee_x4.webp").write_bytes(b"mine")
    args = ["batch", str(src), "-o", str(tmp_path / "out"), "--suffix", "_x4", "--ext", "webp"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and summary(result.stdout) == (1, 1, 0)
    assert (tmp_path / "out" / "coffee_x4.webp").read_bytes() == b"mine"
    assert Image.open(tmp_path / "out" / "camera_x4.webp").size == (192, 128)
    redo = runner.invoke(app, [*args, "--overwrite", "--quality", "80"])
    assert redo.exit_code == 0 and summary(redo.stdout) == (2, 0, 0)
    assert Image.open(tmp_path / "out" / "coffee_x4.webp").size == (192, 128)


def test_model_options_reach_the_upscaler(tmp_path, loads):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo()).save(src / "a.png")
    result = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "--scale", "2",
                                 "--color-fix", "none", "--tile", "512", "--model", "./ckpt", "--offline"])
    assert result.exit_code == 0, result.output
    assert "0.0 MP of output, 1 tile of 1024 px; time unknown on the CPU" in result.output  # the cost, said first
    m, o = loads[0].options, loads[0].requests[0]
    assert (o.scale, o.color_fix, o.tile, m.model, m.offline) == (2, "none", "512", "./ckpt", True)
    assert Image.open(tmp_path / "out" / "a.png").size == (96, 64)


def test_collisions_max_pixels_and_dry_run(tmp_path, loads):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo()).save(src / "a.png")
    Image.fromarray(photo("coffee")).save(src / "a.jpg")
    Image.fromarray(photo("chelsea", (400, 300))).save(src / "big.png")
    dry = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "--ext", "png", "--dry-run"])
    assert dry.exit_code == 0 and "collision" in dry.stdout and not loads
    assert not any((tmp_path / "out").iterdir())
    result = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "--ext", "png",
                                 "--max-pixels", "1"])
    assert result.exit_code == 1 and summary(result.stdout) == (0, 0, 3)
    assert "collision" in result.stdout and "max-pixels" in result.stdout
    assert loads[0].calls == 0 and not any((tmp_path / "out").iterdir())


def test_bad_folder_is_one_line_error_without_loading(tmp_path, loads):
    result = runner.invoke(app, ["batch", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "error:" in result.output and "not found" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not loads
    bad = runner.invoke(app, ["batch", str(tmp_path), "-o", str(tmp_path / "out"), "--ext", "gif"])
    assert bad.exit_code == 2 and "ext" in bad.output


BATCH_CHILD = """
import cv2, numpy as np
from fluxsr_cli.upscale.batch import BatchConfig, run_batch

def bicubic(rgb):  # FakeUpscaler's
    h, w = rgb.shape[:2]
    return np.clip(cv2.resize(rgb, (w * 4, h * 4), interpolation=cv2.INTER_CUBIC), 0, 1)

run_batch(BatchConfig({src!r}, {out!r}), bicubic)
"""


def removed(output: str) -> int:
    """The "temporaries removed" column of the final table."""
    row = re.search(r"[\d.]+ s\s*│\s*[\d.]+ s\s*│\s*(\d+)\s*│", output)
    assert row, output
    return int(row[1])


@posix_only
def test_a_killed_batch_leaves_only_its_outputs_after_a_rerun(tmp_path, loads):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(photo(name)).save(src / f"{name}.png")
    reference = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "ref")])
    assert reference.exit_code == 0 and removed(reference.stdout) == 0
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out)]

    with blocked_writer(BATCH_CHILD.format(src=str(src), out=str(out)), 2, tmp_path) as temp:
        assert temp.parent == out and parse_temporary(temp.name).pid != os.getpid()
        live = runner.invoke(app, args)  # the writer still runs: its temporary is left alone
        assert live.exit_code == 0 and summary(live.stdout) == (2, 1, 0) and removed(live.stdout) == 0
        assert temp.exists()
        assert temp.name not in runner.invoke(app, [*args, "--dry-run"]).stdout
    # killed: no exception ran, the half-written temporary is still there
    assert temp.exists() and temp.stat().st_size > 0
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0 and temp.name in dry.stdout and "killed run" in dry.stdout and temp.exists()
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0 and summary(rerun.stdout) == (0, 3, 0) and removed(rerun.stdout) == 1
    assert listing(out) == listing(tmp_path / "ref")
