"""A contact sheet of an evaluation's worst and best images by LPIPS (``fluxsr eval --grid``).

The metric is chosen by name from the report: LPIPS-Alex (the paper's LPIPS) when it was scored,
else LPIPS-VGG. Each image is shown as a thumbnail under its score and name; the worst row first
(highest LPIPS), then the best.
"""

from __future__ import annotations

import math
from pathlib import Path

from fluxsr_cli.atomic import check_writable
from fluxsr_cli.errors import InputError
from fluxsr_cli.images.compare import contact_sheet
from fluxsr_cli.images.reading import read_image
from fluxsr_cli.images.writing import write_image
from fluxsr_cli.quality.evaluate import EvalReport, ImageResult

GRID_METRICS = ("lpips-alex", "lpips-vgg")  # in order of preference


def check_grid(path: str | Path, gt_dir: str | Path | None, metrics: tuple[str, ...] | None,
               overwrite: bool = False) -> None:
    """Refuse a grid before any scoring: ``path`` must be writable, and LPIPS needs ground truth and,
    when ``metrics`` are named, one of :data:`GRID_METRICS` among them. Raises :class:`InputError`."""
    check_writable(Path(path), overwrite)
    if gt_dir is None:
        raise InputError(f"{path}: --grid ranks images by LPIPS, which needs ground truth; give --gt GT_DIR")
    if metrics is not None and not set(metrics) & set(GRID_METRICS):
        raise InputError(f"{path}: --grid ranks images by LPIPS; add {' or '.join(GRID_METRICS)} to --metrics")


def grid_metric(report: EvalReport) -> str:
    """The LPIPS the report scored images with: "lpips-alex" when present, else "lpips-vgg"."""
    for name in GRID_METRICS:
        if any(math.isfinite(r.scores.get(name, math.nan)) for r in report.rows):
            return name
    why = "; ".join(f"{m}: {report.unavailable[m]}" for m in GRID_METRICS if m in report.unavailable)
    raise InputError("--grid ranks images by LPIPS, but no image has an LPIPS score "
                     f"({why or 'not among --metrics'}); give --gt GT_DIR and keep lpips-vgg or lpips-alex")


def worst_and_best(report: EvalReport, metric: str, count: int = 4) -> tuple[list[ImageResult], list[ImageResult]]:
    """The ``count`` images of highest ``metric`` (worst first) and of lowest (best first).

    With fewer than ``2 count`` scored images, they are split in two halves, the worse half one
    larger; no image is shown twice.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    scored = sorted((r for r in report.rows if math.isfinite(r.scores.get(metric, math.nan))),
                    key=lambda r: (-r.scores[metric], r.name))
    n_worst = min(count, (len(scored) + 1) // 2)
    n_best = min(count, len(scored) - n_worst)
    return scored[:n_worst], scored[len(scored) - n_best:][::-1]


def write_grid(report: EvalReport, path: str | Path, count: int = 4, cell: int = 256,
               overwrite: bool = False) -> tuple[int, int]:
    """Write the contact sheet of :func:`worst_and_best` to ``path`` atomically; return its (width, height)."""
    metric = grid_metric(report)
    worst, best = worst_and_best(report, metric, count)

    def cells(rows: list[ImageResult]) -> list:
        return [(read_image(r.pred).rgb, f"{r.scores[metric]:.4f}  {r.name}") for r in rows]

    sheet_rows = [(f"worst {len(worst)} by {metric} (higher is worse)", cells(worst))]
    if best:
        sheet_rows.append((f"best {len(best)} by {metric}", cells(best)))
    sheet = contact_sheet(sheet_rows, cell=cell)
    write_image(path, sheet, overwrite=overwrite)
    return sheet.shape[1], sheet.shape[0]
