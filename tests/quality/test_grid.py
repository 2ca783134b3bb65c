"""`--grid`'s choice: LPIPS by name from the report (Alex first), the worst and the best images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fluxsr_cli.errors import InputError
from fluxsr_cli.quality.evaluate import EvalConfig, EvalReport, ImageResult
from fluxsr_cli.quality.grid import grid_metric, worst_and_best, write_grid


def _report(scores: dict[str, dict[str, float]], tmp_path=None, unavailable=None) -> EvalReport:
    rows = []
    for name, s in scores.items():
        pred = None
        if tmp_path is not None:
            pred = tmp_path / f"{name}.png"
            Image.fromarray(np.full((12, 16, 3), len(rows) * 40, np.uint8)).save(pred)
        rows.append(ImageResult(name, pred, None, dict(s)))
    metrics = tuple(sorted({m for s in scores.values() for m in s}))
    return EvalReport(EvalConfig("pred"), metrics, unavailable or {}, tuple(rows), {}, {})


def test_lpips_alex_is_preferred_then_vgg():
    assert grid_metric(_report({"a": {"lpips-vgg": 0.2, "lpips-alex": 0.3}})) == "lpips-alex"
    assert grid_metric(_report({"a": {"lpips-vgg": 0.2, "psnr": 20.0}})) == "lpips-vgg"
    assert grid_metric(_report({"a": {"lpips-alex": math.nan, "lpips-vgg": 0.1}})) == "lpips-vgg"
    with pytest.raises(InputError, match="lpips-vgg: no weights"):
        grid_metric(_report({"a": {"psnr": 20.0}}, unavailable={"lpips-vgg": "no weights"}))


@pytest.mark.parametrize(("n", "count", "worst", "best"), [
    (10, 3, ["i9", "i8", "i7"], ["i0", "i1", "i2"]),
    (5, 4, ["i4", "i3", "i2"], ["i0", "i1"]),  # fewer than 2 count: halves, no image twice
    (1, 4, ["i0"], []),
])
def test_worst_and_best(n, count, worst, best):
    report = _report({f"i{i}": {"lpips-vgg": i / 10} for i in range(n)} | {"unscored": {"psnr": 1.0}})
    got = worst_and_best(report, "lpips-vgg", count)
    assert [r.name for r in got[0]] == worst and [r.name for r in got[1]] == best


def test_write_grid_size(tmp_path):
    report = _report({f"i{i}": {"lpips-alex": i / 10} for i in range(3)}, tmp_path)
    assert write_grid(report, tmp_path / "grid.png", count=4, cell=64) == (2 * 64 + 8, 2 * (2 * 28 + 64) + 8)
    assert Image.open(tmp_path / "grid.png").size == (136, 248)
