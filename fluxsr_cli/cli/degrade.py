"""`fluxsr degrade`: make LR images from a folder of HQ images with the Real-ESRGAN degradation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fluxsr_cli.cli.common import console, handle_errors, labelled, out, parse_overrides, rich_progress, warn


@handle_errors
def degrade(
    hq_dir: Annotated[Path, typer.Argument(help="Folder of HQ images (PNG, JPEG, WebP, TIFF, BMP, ...).",
                                           show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the LR PNGs and degradations.jsonl.",
                                         show_default=False)],
    scale: Annotated[int | None, typer.Option("--scale", "-s", help="Downscaling factor (default: the config's, 4).",
                                              show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Root seed; each image's seed comes from it and its path.")] = 0,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with a \\[degrade] table "
                                                "(default: Real-ESRGAN's settings).", show_default=False)] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override one setting, e.g. "
                                                        "stage2.blur_prob=0.5 (repeatable).", show_default=False)] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also degrade images in sub-folders.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo existing outputs (else they are skipped).")] = False,
) -> None:
    """Make LR images from HQ images with the Real-ESRGAN second-order degradation.

    Writes OUTPUT/<name>.png (HQ size / scale), one line per image in OUTPUT/degradations.jsonl
    (its seed and every drawn parameter) and the settings in OUTPUT/degrade_config.toml.
    Rerun to resume: existing outputs are skipped.

    Examples:
      fluxsr degrade photos/ -o photos_lr/
      fluxsr degrade DIV2K_HR/ -o DIV2K_LR/ --recursive --seed 1 --config configs/degrade_realesrgan.toml
    """
    from rich.table import Table

    from fluxsr_cli.configs import load_config
    from fluxsr_cli.degrade.config import DegradeConfig
    from fluxsr_cli.degrade.folder import degrade_folder

    items = parse_overrides(overrides) + ([f"scale={scale}"] if scale is not None else [])
    cfg = load_config(DegradeConfig, config, "degrade", items)
    with rich_progress() as progress:
        result = degrade_folder(hq_dir, output, cfg, seed=seed, recursive=recursive, overwrite=overwrite,
                                progress=progress)

    table = Table(title=f"fluxsr degrade x{cfg.scale}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", str(result.total))
    table.add_row("written", str(result.written))
    table.add_row("skipped (already there)", str(result.skipped))
    table.add_row("failed", str(len(result.failed)))
    table.add_row("temporaries of killed runs removed", str(result.removed))
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("records", str(result.records))
    out.print(table)
    if result.unrecorded:
        warn(f"{len(result.unrecorded)} existing output(s) have no record (e.g. {result.unrecorded[0]}); "
             "pass --overwrite to redo them")
    for rel, reason in result.failed:
        console.print(labelled("skipped:", "bold red", f"{rel}: {reason}"), soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)
