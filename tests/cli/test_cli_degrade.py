"""`fluxsr degrade` on a folder of real photos, through Typer's CliRunner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from fluxsr_cli.degrade.folder import RECORDS_NAME, image_seed
from tests.blocked_writer import blocked_writer, listing, posix_only

runner = CliRunner()


def _save(path: Path, name: str, h: int, w: int) -> None:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img[:h, :w])).save(path)


@pytest.fixture()
def hq(tmp_path: Path) -> Path:
    folder = tmp_path / "hq"
    _save(folder / "astronaut.png", "astronaut", 96, 128)
    _save(folder / "coffee.jpg", "coffee", 80, 100)  # not a multiple of 4 wide: 100 -> 25
    _save(folder / "nested" / "chelsea.png", "chelsea", 64, 64)
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("ignored")
    return folder


def _records(lq: Path) -> list[dict]:
    return [json.loads(line) for line in (lq / RECORDS_NAME).read_text().splitlines()]


def test_degrade_folder_writes_pngs_and_records_and_resumes(hq: Path, tmp_path: Path) -> None:
    lq = tmp_path / "lq"
    result = runner.invoke(app, ["degrade", str(hq), "-o", str(lq), "--seed", "5"])
    assert result.exit_code == 1, result.output  # the broken file is reported, the rest is done
    assert "broken.png" in result.output
    assert sorted(p.name for p in lq.glob("*.png")) == ["astronaut.png", "coffee.png"]
    assert not (lq / "nested").exists()  # not recursive
    with Image.open(lq / "astronaut.png") as im:
        assert im.size == (32, 24) and im.mode == "RGB"
    with Image.open(lq / "coffee.png") as im:
        assert im.size == (25, 20)
    records = _records(lq)
    assert [r["file"] for r in records] == ["astronaut.png", "coffee.jpg"]
    rec = records[0]
    assert rec["seed"] == image_seed(5, "astronaut.png") and rec["hq_size"] == [96, 128] and rec["lq_size"] == [24, 32]
    assert {"stage1", "stage2", "final"} <= set(rec) and 30 <= rec["stage1"]["jpeg_quality"] <= 95
    assert (lq / "degrade_config.toml").exists()

    # a rerun skips what is there and adds no records
    before = (lq / "astronaut.png").read_bytes()
    (lq / "coffee.png").unlink()
    again = runner.invoke(app, ["degrade", str(hq), "-o", str(lq), "--seed", "5"])
    assert again.exit_code == 1
    assert (lq / "astronaut.png").read_bytes() == before
    assert len(_records(lq)) == 3  # only coffee's record is added again
    assert _records(lq)[-1] == records[1]  # the same draws: the seed comes from the path, not the order


def test_recursive_same_seed_same_bytes_and_config_guard(hq: Path, tmp_path: Path) -> None:
    (hq / "broken.png").unlink()
    a, b = tmp_path / "a", tmp_path / "b"
    ra = runner.invoke(app, ["degrade", str(hq), "-o", str(a), "--recursive", "--scale", "2"])
    assert ra.exit_code == 0, ra.output
    rb = runner.invoke(app, ["degrade", str(hq), "-o", str(b), "-r", "--set", "scale=2"])
    assert rb.exit_code == 0, rb.output
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert names == ["astronaut.png", "coffee.png", "nested/chelsea.png"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    with Image.open(a / "nested" / "chelsea.png") as im:
        assert im.size == (32, 32)
    # another seed into the same folder would mix two data sets: refused, unless --overwrite
    other = runner.invoke(app, ["degrade", str(hq), "-o", str(a), "-r", "--scale", "2", "--seed", "1"])
    assert other.exit_code == 2 and "--overwrite" in other.output
    redo = runner.invoke(app, ["degrade", str(hq), "-o", str(a), "-r", "--scale", "2", "--seed", "1", "--overwrite"])
    assert redo.exit_code == 0, redo.output
    assert (a / "astronaut.png").read_bytes() != (b / "astronaut.png").read_bytes()
    assert len(_records(a)) == 3  # the record starts over


def test_config_file_and_errors(hq: Path, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    ok = runner.invoke(app, ["degrade", str(hq / "nested"), "-o", str(tmp_path / "c"),
                             "--config", str(root / "configs" / "degrade_realesrgan.toml")])
    assert ok.exit_code == 0, ok.output
    missing = runner.invoke(app, ["degrade", str(tmp_path / "nowhere"), "-o", str(tmp_path / "d")])
    assert missing.exit_code == 2 and "not a folder" in missing.output
    bad = runner.invoke(app, ["degrade", str(hq), "-o", str(tmp_path / "e"), "--set", "stage1.blur_prob=2"])
    assert bad.exit_code == 2 and "blur_prob" in bad.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(app, ["degrade", str(empty), "-o", str(tmp_path / "f")])
    assert none.exit_code == 2 and "no images" in none.output


@posix_only
def test_a_killed_run_leaves_only_its_outputs_after_a_rerun(hq: Path, tmp_path: Path) -> None:
    reference = runner.invoke(app, ["degrade", str(hq), "-o", str(tmp_path / "ref"), "--seed", "5"])
    assert reference.exit_code == 1, reference.output  # broken.png
    lq = tmp_path / "lq"
    child = f"from fluxsr_cli.cli import app\napp(['degrade', {str(hq)!r}, '-o', {str(lq)!r}, '--seed', '5'])\n"
    with blocked_writer(child, 2, tmp_path / "child") as temp:  # astronaut written, coffee half-written
        assert temp.parent == lq and temp.suffix == ".png"
    assert temp.exists() and (lq / "astronaut.png").exists() and not (lq / "coffee.png").exists()
    rerun = runner.invoke(app, ["degrade", str(hq), "-o", str(lq), "--seed", "5"])
    assert rerun.exit_code == 1, rerun.output
    assert re.search(r"temporaries of killed runs removed\s*│\s*1\b", rerun.output), rerun.output
    assert listing(lq) == listing(tmp_path / "ref")
