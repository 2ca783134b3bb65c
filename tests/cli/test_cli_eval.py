"""`fluxsr eval` on real photos and degraded copies of them, through Typer's CliRunner."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from fluxsr_cli.quality.dists import DISTS_WEIGHTS
from fluxsr_cli.quality.evaluate import METRICS, EvalConfig, evaluate
from fluxsr_cli.quality.lpips import VGG16_FILE, WEIGHTS
from fluxsr_cli.quality.metrics import psnr_y, ssim_y
from tests.lpips_weights import dists_cache
from tests.quality import test_dists
from tests.quality.reference_pairs import reference_pairs
from tests.quality.test_lpips_reference import PINNED, TOLERANCE

PHOTOS = ("astronaut", "coffee", "chelsea")
SIZE = 96


def _save(arr: np.ndarray, path) -> None:
    Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """gt/ holds 3 photos; pred/ blurred + noisy copies, one extra, one of the wrong size, one broken."""
    root = tmp_path_factory.mktemp("eval")
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(PHOTOS):
        img = getattr(data, name)()[:SIZE, :SIZE].astype(np.float64) / 255
        _save(img, gt_dir / f"{name}.png")
        blurred = gaussian_filter(img, sigma=(0.5 + i, 0.5 + i, 0))  # heavier for each photo
        _save(blurred + rng.normal(0, 0.02, img.shape), pred_dir / f"{name}.png")
    _save(data.astronaut()[:SIZE, :SIZE] / 255, pred_dir / "extra.png")  # no ground truth
    _save(data.rocket()[:SIZE, :SIZE] / 255, gt_dir / "small.png")
    _save(data.rocket()[: SIZE // 2, : SIZE // 2] / 255, pred_dir / "small.png")  # wrong size
    (pred_dir / "broken.png").write_bytes(b"not a png")
    _save(data.coffee()[:SIZE, :SIZE] / 255, gt_dir / "lonely.png")  # no prediction
    return pred_dir, gt_dir


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """TORCH_HOME with the real LPIPS and DISTS weights in hub/checkpoints, where they are looked for by default."""
    src = dists_cache()
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    for f in {f for files in (*WEIGHTS.values(), DISTS_WEIGHTS) for f in files}:
        (ckpt / f.name).symlink_to(src / f.name)
    monkeypatch.delenv("FLUXSR_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    return tmp_path / "torch"


@pytest.fixture
def no_pyiqa(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # `import pyiqa` now raises ImportError


def _run(*args: str):
    return CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "160"})


def test_table_csv_and_json(folders, torch_home, no_pyiqa, tmp_path):
    pred_dir, gt_dir = folders
    out_csv, out_json = tmp_path / "res.csv", tmp_path / "res.json"
    r = _run(str(pred_dir), "--gt", str(gt_dir), "--dataset", "realsr", "--csv", str(out_csv), "--json", str(out_json), "--device", "cpu")
    assert r.exit_code == 0, r.output
    for text in ("psnr", "ssim", "lpips-alex", "lpips-vgg", "dists", "FluxSR paper (realsr)", "24.83", "0.7175", "0.3200"):
        assert text in r.stdout, text
    # pyiqa's metrics are reported unavailable, with the reason, on stderr
    assert "unavailable" in r.stderr and "musiq" in r.stderr and "pyiqa" in r.stderr
    for problem in ("small", "broken", "extra"):
        assert problem in r.stderr

    rows = {row["name"]: row for row in csv.DictReader(out_csv.open())}
    assert set(rows) == {*PHOTOS, "extra", "small", "broken", "lonely"}
    for name in PHOTOS:
        pred = np.asarray(Image.open(pred_dir / f"{name}.png"), np.float64) / 255
        gt = np.asarray(Image.open(gt_dir / f"{name}.png"), np.float64) / 255
        assert float(rows[name]["psnr"]) == pytest.approx(psnr_y(pred, gt, 4), abs=1e-6)
        assert float(rows[name]["ssim"]) == pytest.approx(ssim_y(pred, gt, 4), abs=1e-6)
        assert rows[name]["notes"] == ""
    # heavier blur for each photo: both LPIPS and DISTS rise, SSIM falls
    for metric in ("lpips-alex", "lpips-vgg", "dists"):
        lp = [float(rows[n][metric]) for n in PHOTOS]
        assert lp[0] < lp[1] < lp[2], metric
    ss = [float(rows[n]["ssim"]) for n in PHOTOS]
    assert ss[0] > ss[1] > ss[2]
    assert "differs from ground truth" in rows["small"]["notes"] and rows["small"]["psnr"] == ""
    assert "unreadable prediction" in rows["broken"]["notes"]
    assert "no ground truth" in rows["extra"]["notes"]
    assert "no prediction" in rows["lonely"]["notes"] and rows["lonely"]["psnr"] == ""

    report = json.loads(out_json.read_text())
    assert report["counts"]["psnr"] == 3
    assert report["means"]["psnr"] == pytest.approx(np.mean([float(rows[n]["psnr"]) for n in PHOTOS]))
    assert "musiq" in report["unavailable"] and report["paper"]["psnr"] == 24.83


def test_lpips_values_match_the_pinned_references(tmp_path, monkeypatch, no_pyiqa):
    """PSNR, SSIM, both LPIPS and DISTS with no extra installed, weights from --weights-dir, offline."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for name, (a, b) in reference_pairs().items():  # uint8 PNGs: the exact pinned inputs
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(gt_dir / f"{name}.png")
        Image.fromarray(np.clip(b, 0, 255).astype(np.uint8)).save(pred_dir / f"{name}.png")
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    out_csv = tmp_path / "res.csv"
    r = _run(str(pred_dir), "--gt", str(gt_dir), "--weights-dir", str(dists_cache()), "--csv", str(out_csv),
             "--device", "cpu")
    assert r.exit_code == 0, r.output
    table = r.stdout.splitlines()
    for metric in ("psnr", "ssim", "lpips-alex", "lpips-vgg", "dists"):
        assert any(line.strip("│ ").startswith(metric) for line in table), metric
    rows = {row["name"]: row for row in csv.DictReader(out_csv.open())}
    assert set(rows) == set(PINNED)
    for name, (alex, vgg) in PINNED.items():
        assert abs(float(rows[name]["lpips-alex"]) - alex) <= TOLERANCE, name
        assert abs(float(rows[name]["lpips-vgg"]) - vgg) <= TOLERANCE, name
        assert abs(float(rows[name]["dists"]) - test_dists.PINNED[name]) <= test_dists.TOLERANCE, name


def test_lpips_weights_missing_degrades_to_the_other_metrics(folders, tmp_path, monkeypatch, no_pyiqa):
    monkeypatch.delenv("FLUXSR_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    pred_dir, gt_dir = folders
    report = evaluate(EvalConfig(pred_dir, gt_dir, metrics=("psnr", "lpips-vgg", "lpips-alex", "dists"), device="cpu"))
    assert report.metrics == ("psnr",)
    assert VGG16_FILE in report.unavailable["lpips-vgg"]
    # one message names all five files (the VGG16 shared by LPIPS-VGG and DISTS once)
    assert report.unavailable["lpips-alex"] == report.unavailable["lpips-vgg"] == report.unavailable["dists"]
    assert "5 file(s)" in report.unavailable["dists"]
    assert report.counts["psnr"] == 3


def test_a_metric_whose_files_are_there_runs_when_others_lack_theirs(folders, tmp_path, monkeypatch, no_pyiqa):
    import shutil

    alex = tmp_path / "alex-only"
    alex.mkdir()
    for f in WEIGHTS["alex"]:  # LPIPS-Alex's backbone and heads; nothing of VGG16 or DISTS
        shutil.copy(dists_cache() / f.name, alex / f.name)
    monkeypatch.setenv("FLUXSR_WEIGHTS_DIR", str(alex))
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    pred_dir, gt_dir = folders
    report = evaluate(EvalConfig(pred_dir, gt_dir, metrics=("lpips-alex", "lpips-vgg", "dists"), device="cpu"))
    assert report.metrics == ("lpips-alex",) and report.counts["lpips-alex"] == 3
    assert VGG16_FILE in report.unavailable["lpips-vgg"] and VGG16_FILE in report.unavailable["dists"]


def test_crop_border_defaults_to_scale(folders, no_pyiqa, tmp_path):
    pred_dir, gt_dir = folders
    means = {}
    for label, opts in {"scale2": ["--scale", "2"], "crop2": ["--crop-border", "2"], "default": []}.items():
        path = tmp_path / f"{label}.json"
        r = _run(str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr", "--json", str(path), *opts)
        assert r.exit_code == 0, r.output
        saved = json.loads(path.read_text())
        means[label] = (saved["config"]["crop_border"], saved["means"]["psnr"])
    assert means["scale2"] == means["crop2"] and means["scale2"][0] == 2
    assert means["default"][0] == 4 and means["default"][1] != means["scale2"][1]


def test_no_reference_only_without_pyiqa_is_a_clear_error(folders, no_pyiqa):
    pred_dir, _ = folders
    r = _run(str(pred_dir))
    assert r.exit_code == 2
    assert "no metric can run" in r.stderr and "pip install 'fluxsr[eval]'" in r.stderr
    assert "with --gt GT_DIR, PSNR, SSIM, LPIPS and DISTS run" in r.stderr  # no --gt given: the advice fits


def test_help_lists_every_metric():
    r = _run("--help")
    assert r.exit_code == 0
    flat = " ".join(r.stdout.replace("│", " ").split())
    for name in METRICS:
        assert name in flat, name
    assert "always" not in flat  # the no-reference metrics need pyiqa


def test_bad_options(folders, tmp_path):
    pred_dir, gt_dir = folders
    r = _run(str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr,sharpness")
    assert r.exit_code == 2 and "unknown metric(s) sharpness" in r.stderr
    r = _run(str(pred_dir), "--dataset", "set5")
    assert r.exit_code == 2 and "unknown dataset" in r.stderr
    r = _run(str(tmp_path / "nowhere"))
    assert r.exit_code == 2 and "folder not found" in r.stderr
    existing = tmp_path / "exists.csv"
    existing.write_text("keep")
    r = _run(str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr", "--csv", str(existing))
    assert r.exit_code == 2 and "--overwrite" in r.stderr and existing.read_text() == "keep"


def test_grid_shows_the_worst_and_best_by_lpips(folders, torch_home, no_pyiqa, tmp_path):
    """Each photo is blurred more than the one before: chelsea is the worst, astronaut the best."""
    pred_dir, gt_dir = folders
    grid = tmp_path / "grid.png"
    r = _run(str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr,lpips-vgg", "--grid", str(grid),
             "--grid-count", "1", "--device", "cpu")
    assert r.exit_code == 0, r.output
    sheet = np.asarray(Image.open(grid), np.float32) / 255
    band, gap, cell = 28, 8, 256
    assert sheet.shape == (2 * (2 * band + cell) + gap, cell, 3)
    off = (cell - SIZE) // 2  # 96 px photos sit unscaled in the middle of their cell
    worst_top, best_top = 2 * band, 2 * band + cell + gap + 2 * band
    for top, name in ((worst_top, "chelsea"), (best_top, "astronaut")):
        expected = np.asarray(Image.open(pred_dir / f"{name}.png"), np.float32) / 255
        np.testing.assert_array_equal(sheet[top + off:top + off + SIZE, off:off + SIZE], expected)
    for top in (0, band, worst_top + cell + gap, worst_top + cell + gap + band):  # titles and score labels
        assert (sheet[top:top + band] > 0.6).any(), top


def test_grid_needs_lpips(folders, tmp_path):
    pred_dir, gt_dir = folders
    r = _run(str(pred_dir), "--grid", str(tmp_path / "g.png"))
    assert r.exit_code == 2 and "needs ground truth" in r.stderr
    r = _run(str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr", "--grid", str(tmp_path / "g.png"))
    assert r.exit_code == 2 and "add lpips-alex or lpips-vgg to --metrics" in r.stderr
    assert not (tmp_path / "g.png").exists()
