"""`fluxsr eval`: the paper's metrics on a folder of outputs, as a Rich table (and CSV / JSON)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from fluxsr_cli.cli.common import console, handle_errors, labelled, out, rich_progress


@handle_errors
def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of super-resolved images to score.")],
    gt: Annotated[Path | None, typer.Option("--gt", help="Folder of ground-truth images, matched by file name.")] = None,
    scale: Annotated[int, typer.Option("--scale", min=1, help="Upscaling factor of the outputs.")] = 4,
    crop_border: Annotated[
        int | None, typer.Option("--crop-border", min=0, help="Pixels cut per side for PSNR/SSIM \\[default: --scale].")
    ] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="Comma-separated, from psnr, ssim, lpips-alex, lpips-vgg, dists, musiq, maniqa, topiq, clipiqa, niqe, qalign "
                                "\\[default: all that apply but qalign].")] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Show the paper's FluxSR row: realsr, drealsr or div2k-val.")
    ] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write per-image results as CSV.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write per-image results and means as JSON.")] = None,
    grid: Annotated[Path | None, typer.Option("--grid", help=(
        "Write a contact sheet of the worst and best images by LPIPS (needs --gt) to this file."))] = None,
    grid_count: Annotated[int, typer.Option("--grid-count", min=1, help="Images in each row of --grid.")] = 4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing --csv/--json/--grid files.")] = False,
    device: Annotated[str, typer.Option("--device", help="Device for the learned metrics: auto, cpu, cuda, ...")] = "auto",
    weights_dir: Annotated[Path | None, typer.Option(
        "--weights-dir", help="Folder of the LPIPS and DISTS weight files (fetched there once when missing) "
        "\\[default: $FLUXSR_WEIGHTS_DIR, else torch hub's checkpoints folder].", show_default=False)] = None,
) -> None:
    """Score outputs: PSNR/SSIM on Y, LPIPS-Alex, LPIPS-VGG, DISTS with --gt; MUSIQ, MANIQA, TOPIQ, CLIPIQA, NIQE.

    The full-reference metrics need nothing extra installed (LPIPS and DISTS fetch their published
    weights once into the weights folder; offline, FLUXSR_OFFLINE=1, they must be there already);
    the no-reference ones run through pyiqa: pip install 'fluxsr\\[eval]'.

    Examples:
      fluxsr eval out_x4 --gt RealSR/HR --dataset realsr --csv scores.csv
      fluxsr eval out_x4 --metrics psnr,ssim,lpips-alex --gt hr --device cpu --weights-dir ~/metric-weights
      fluxsr eval out_x4 --gt hr --grid worst_best.png
    """
    from fluxsr_cli.atomic import check_writable, sweep_temporaries_of
    from fluxsr_cli.quality.evaluate import METRICS, EvalConfig, group_reasons, write_csv, write_json
    from fluxsr_cli.quality.evaluate import evaluate as run_eval
    from fluxsr_cli.quality.grid import check_grid, write_grid

    for path in (csv_path, json_path):
        if path is not None:
            check_writable(path, overwrite)
            sweep_temporaries_of(path)  # what a killed run writing it left
    names = tuple(m.strip().lower() for m in metrics.split(",") if m.strip()) if metrics is not None else None
    if grid is not None:
        check_grid(grid, gt, names, overwrite)  # before minutes of scoring
    config = EvalConfig(pred_dir, gt, scale if crop_border is None else crop_border, names, dataset, device, weights_dir)
    with rich_progress(transient=True) as progress:
        report = run_eval(config, progress)

    from rich.table import Table

    n_images = sum(r.pred is not None for r in report.rows)
    table = Table(title=f"{pred_dir}: {n_images} images")
    for col in ("metric", "mean", "images"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    if report.paper is not None:
        table.add_column(f"FluxSR paper ({dataset})", justify="right", style="cyan")
    for m in report.metrics:
        cells = [f"{m} {'↓' if METRICS[m].lower_better else '↑'}", _fmt(report.means[m]), str(report.counts[m])]
        table.add_row(*cells, *([_fmt(report.paper.get(m))] if report.paper is not None else []))
    out.print(table)
    for reason, names in group_reasons(report.unavailable).items():
        console.print(labelled("unavailable", "yellow", f"{', '.join(names)}: {reason}"), soft_wrap=True)
    for row in report.problems:
        for note in row.notes:
            console.print(labelled(f"{row.name}:", "yellow", note), soft_wrap=True)
    if csv_path is not None:
        write_csv(report, csv_path, overwrite=overwrite)
        console.print(f"wrote {csv_path}")
    if json_path is not None:
        write_json(report, json_path, overwrite=overwrite)
        console.print(f"wrote {json_path}")
    if grid is not None:
        width, height = write_grid(report, grid, grid_count, overwrite=overwrite)
        console.print(f"wrote {grid} ({width}x{height})")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}"
