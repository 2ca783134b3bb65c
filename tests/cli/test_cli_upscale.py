"""`fluxsr upscale` and `fluxsr info` through the CLI on real photos and the tiny checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from tests.blocked_writer import blocked_writer, posix_only
from tests.conftest import HUB_MODEL

runner = CliRunner()


@pytest.fixture()
def cat_jpg(tmp_path):
    from skimage import data

    path = tmp_path / "chelsea cat é.jpg"  # spaces and non-ASCII in the name
    Image.fromarray(data.chelsea()[::6, :450:6]).save(path, quality=92)  # 75x50 (w x h)
    return path


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize("fmt", ["fluxsr", "community"])
def test_upscale_both_formats_from_folders(fmt, tiny_ckpt, tiny_community, tiny_base, cat_jpg, tmp_path):
    model = tiny_ckpt if fmt == "fluxsr" else tiny_community
    out = tmp_path / "out.png"
    code, output = _run("upscale", cat_jpg, "-o", out, "--model", model, "--base", tiny_base)
    assert code == 0, output
    assert Image.open(out).size == (300, 200)
    assert "wrote" in output and "300x200" in output


def test_upscale_from_offline_hub_cache_in_a_fresh_process(hub_cache, cat_jpg, tmp_path):
    """HF_HUB_OFFLINE is read when huggingface_hub is imported: set it for a fresh process."""
    out = tmp_path / "out.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(tmp_path / "hfhome")}
    proc = subprocess.run([sys.executable, "-m", "fluxsr_cli", "upscale", str(cat_jpg), "-o", str(out),
                           "--model", HUB_MODEL], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (300, 200)


def test_same_input_same_bytes(tiny_ckpt, cat_jpg, tmp_path):
    """Nothing in the one-step restore is random (the VAE posterior's mean, no noise), so there is no
    --seed and two runs write the same file; sampling the posterior instead of its mean fails here."""
    for name in ("a.png", "b.png"):
        assert _run("upscale", cat_jpg, "-o", tmp_path / name, "--model", tiny_ckpt)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    code, output = _run("upscale", cat_jpg, "-o", tmp_path / "c.png", "--model", tiny_ckpt, "--seed", 7)
    assert code == 2 and "--seed" in output and not (tmp_path / "c.png").exists()


def test_tiled_upscale_through_the_cli(tiny_ckpt, cat_jpg, tmp_path):
    """Transformer tiles of 256 px and VAE tiles of 128 px on a 300x200 output: the tiled path end to end."""
    out = tmp_path / "tiled.png"
    code, output = _run("upscale", cat_jpg, "-o", out, "--model", tiny_ckpt, "--tile", "256", "--vae-tile", "128")
    assert code == 0, output
    assert Image.open(out).size == (300, 200)


def test_what_the_output_cannot_keep_is_said(tiny_ckpt, cat_jpg, tmp_path):
    rgba = tmp_path / "rgba.png"
    rgb = np.asarray(Image.open(cat_jpg))
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA").save(rgba)
    code, output = _run("upscale", rgba, "-o", tmp_path / "flat.jpg", "--model", tiny_ckpt)
    assert code == 0 and "note:" in output and "white" in output  # alpha composited into the JPEG
    pages = tmp_path / "two pages.tif"
    Image.fromarray(rgb).save(pages, save_all=True, append_images=[Image.fromarray(rgb[::-1])])
    code, output = _run("upscale", pages, "-o", tmp_path / "page1.tif", "--model", tiny_ckpt)
    assert code == 0 and "only the first of its 2 pages" in output


def test_the_input_is_never_the_output(tiny_ckpt, cat_jpg, tmp_path):
    before = cat_jpg.read_bytes()
    code, output = _run("upscale", cat_jpg, "-o", cat_jpg, "--model", tiny_ckpt, "--overwrite")
    assert code == 2 and "is the input itself" in output and cat_jpg.read_bytes() == before
    folder = tmp_path / "a folder"
    folder.mkdir()
    code, output = _run("upscale", cat_jpg, "-o", folder, "--model", tiny_ckpt)  # not "pass --overwrite"
    assert code == 2 and "is a folder" in output


def test_existing_output_is_kept_without_overwrite(tiny_ckpt, cat_jpg, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    code, output = _run("upscale", cat_jpg, "-o", out, "--model", tiny_ckpt)
    assert code == 2 and "--overwrite" in output
    assert out.read_bytes() == b"precious"
    code, _ = _run("upscale", cat_jpg, "-o", out, "--model", tiny_ckpt, "--overwrite")
    assert code == 0 and Image.open(out).size == (300, 200)


@pytest.mark.parametrize("case,expect,code", [
    ("missing_input", "file not found", 2),
    ("zero_byte", "empty", 2),
    ("bad_model", "no such folder", 3),
    ("corrupt_ckpt", "corrupt", 3),
    ("bad_scale", "--scale must be 1-8", 2),
    ("bad_vae_tile", "--vae-tile must be", 2),
])
def test_errors_are_one_line(case, expect, code, tiny_ckpt, cat_jpg, tmp_path):
    import shutil

    src, model, extra = cat_jpg, tiny_ckpt, []
    if case == "missing_input":
        src = tmp_path / "nope.jpg"
    elif case == "zero_byte":
        src = tmp_path / "zero.png"
        src.write_bytes(b"")
    elif case == "bad_model":
        model = tmp_path / "no-such-checkpoint"
    elif case == "corrupt_ckpt":
        model = tmp_path / "ck"
        shutil.copytree(tiny_ckpt, model)
        data = (model / "lora.safetensors").read_bytes()
        (model / "lora.safetensors").write_bytes(data[:100])
    elif case == "bad_scale":
        extra = ["--scale", "9"]
    elif case == "bad_vae_tile":
        extra = ["--vae-tile", "100"]
    got, output = _run("upscale", src, "-o", tmp_path / "o.png", "--model", model, *extra)
    assert got == code, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], output
    assert not (tmp_path / "o.png").exists()


def test_batch_with_the_real_tiny_model(tiny_ckpt, tmp_path, photo):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(photo[::16, ::16]).save(src / "a.png")
    Image.fromarray(photo[100:140, 200:248]).save(src / "sub" / "b.jpg")
    code, output = _run("batch", src, "-o", tmp_path / "out", "--recursive", "--model", tiny_ckpt)
    assert code == 0, output
    assert Image.open(tmp_path / "out" / "a.png").size == (128, 128)
    assert Image.open(tmp_path / "out" / "sub" / "b.jpg").size == (192, 160)


def test_info_lists_cached_models_and_describes_a_checkpoint(hub_cache, tiny_ckpt, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    code, output = _run("info", "--model", tiny_ckpt)
    assert code == 0, output
    assert "torch" in output and "diffusers" in output and "cpu" in output
    assert HUB_MODEL in output and "fluxsr checkpoint" in output and "FLUX base" in output
    assert "t_l" in output and "0.25" in output and "(1, 8, 32)" in output


def test_help_shows_examples():
    code, output = _run("upscale", "--help")
    assert code == 0 and "Examples" in output and "--tile" in output
    assert np.all([cmd in _run("--help")[1] for cmd in ("upscale", "batch", "degrade", "pairs", "distill", "eval")])


def test_compare_writes_bicubic_and_result_side_by_side(tiny_ckpt, cat_jpg, tmp_path):
    import torch
    import torch.nn.functional as F

    out, compare = tmp_path / "out.png", tmp_path / "compare.png"
    code, output = _run("upscale", cat_jpg, "-o", out, "--model", tiny_ckpt, "--compare", compare)
    assert code == 0, output
    sheet = np.asarray(Image.open(compare), np.float32) / 255
    band, gap = 28, 8  # the label band above the panels, the gap between them
    assert sheet.shape == (band + 200, 2 * 300 + gap, 3)
    np.testing.assert_array_equal(sheet[band:, 300 + gap:], np.asarray(Image.open(out), np.float32) / 255)
    lq = torch.from_numpy(np.asarray(Image.open(cat_jpg), np.float32) / 255).permute(2, 0, 1)[None]
    bicubic = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0)
    assert np.abs(sheet[band:, :300] - bicubic.numpy()).max() <= 1 / 255 + 1e-6
    left, right = sheet[:band, :300], sheet[:band, 300 + gap:]
    assert (left > 0.6).any() and (right > 0.6).any() and not np.array_equal(left, right)  # two labels
    assert "bicubic | FluxSR" in output


def test_compare_is_checked_before_the_model_loads(tiny_ckpt, cat_jpg, tmp_path):
    existing = tmp_path / "cmp.png"
    existing.write_bytes(b"keep")
    code, output = _run("upscale", cat_jpg, "-o", tmp_path / "o.png", "--model", tmp_path / "no-model",
                        "--compare", existing)
    assert code == 2 and "cmp.png: output exists" in output and existing.read_bytes() == b"keep"
    code, output = _run("upscale", cat_jpg, "-o", tmp_path / "o.png", "--model", tiny_ckpt,
                        "--compare", tmp_path / "o.png")
    assert code == 2 and "--compare must name another file" in output
    original = cat_jpg.read_bytes()  # the input itself, even with --overwrite: the photo would be lost
    code, output = _run("upscale", cat_jpg, "-o", tmp_path / "o.png", "--model", tiny_ckpt,
                        "--compare", cat_jpg, "--overwrite")
    assert code == 2 and "is the input itself" in output and cat_jpg.read_bytes() == original


@posix_only
def test_a_killed_upscale_leaves_only_the_output_after_a_rerun(tiny_ckpt, cat_jpg, tmp_path):
    out = tmp_path / "out" / "x4.png"
    args = ["upscale", str(cat_jpg), "-o", str(out), "--model", str(tiny_ckpt)]
    with blocked_writer(f"from fluxsr_cli.cli import app\napp({args!r})\n", 1, tmp_path / "child") as temp:
        assert temp.parent == out.parent
    code, output = _run(*args)
    assert code == 0 and "removed 1 temporary file(s) of a killed run" in " ".join(output.split()), output
    assert [p.name for p in out.parent.iterdir()] == ["x4.png"]
