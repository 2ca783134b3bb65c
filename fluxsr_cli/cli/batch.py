"""`fluxsr batch DIR -o OUTDIR`: a folder of photos, resumable, one bad file never stops it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fluxsr_cli.cli import model_options as mo
from fluxsr_cli.cli.common import handle_errors, note, out, rich_progress
from fluxsr_cli.model.checkpoint import DEFAULT_MODEL

FILES = "Files"


@handle_errors
def batch(
    src: Annotated[Path, typer.Argument(help="Folder of images (PNG, JPEG, WebP, TIFF, BMP, ...).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created if needed).",
                                         show_default=False, rich_help_panel=FILES)],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Include subfolders; the tree is mirrored.",
                                            rich_help_panel=FILES)] = False,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only files matching this glob (repeatable).",
                                                      rich_help_panel=FILES)] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Skip files matching this glob (repeatable).",
                                                      rich_help_panel=FILES)] = None,
    suffix: Annotated[str, typer.Option("--suffix", help="Added to output names, e.g. _x4.", rich_help_panel=FILES)] = "",
    ext: Annotated[str | None, typer.Option("--ext", help="Output format (png, jpg, webp, tif, bmp); default: the input's.",
                                            rich_help_panel=FILES)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo existing outputs (default: skip them, i.e. resume).",
                                            rich_help_panel=FILES)] = False,
    quality: Annotated[int, typer.Option("--quality", help="Quality for JPEG/WebP outputs.", rich_help_panel=FILES)] = 95,
    strip_metadata: Annotated[bool, typer.Option("--strip-metadata", help="Drop EXIF and ICC profile.",
                                                 rich_help_panel=FILES)] = False,
    rgb: Annotated[bool, typer.Option("--rgb", help="Write grey and palette inputs as RGB.", rich_help_panel=FILES)] = False,
    max_pixels: Annotated[float, typer.Option("--max-pixels", help="Refuse outputs above this many megapixels "
                                              "(256: a 16 MP photo at x4).", rich_help_panel=FILES)] = 256.0,
    report: Annotated[Path | None, typer.Option("--report", help="Write every file's outcome and timing as JSON.",
                                                rich_help_panel=FILES)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; load no model.",
                                          rich_help_panel=FILES)] = False,
    model: mo.Model = DEFAULT_MODEL, revision: mo.Revision = None, base: mo.Base = None, vae: mo.Vae = None,
    offline: mo.Offline = False,
    device: mo.Device = None, dtype: mo.Dtype = None, t_l: mo.TL = None, guidance: mo.Guidance = None,
    scale: mo.Scale = 4, tile: mo.Tile = "1024", overlap: mo.Overlap = None,
    blend: mo.Blend = "cosine", tile_batch: mo.TileBatch = 1, tile_space: mo.TileSpace = "latent",
    vae_tile: mo.VaeTile = "auto", color_fix: mo.ColorFix = "wavelet", offload: mo.Offload = "none", compile: mo.Compile = False,
    quantize: mo.Quantize = "none",
) -> None:
    """Upscale every image in a folder; rerun the same command to resume.

    Existing outputs are skipped, a bad file is reported and the rest go on; the exit code is 1 when
    any file failed. Several GPUs split the files:
    accelerate launch --num_processes 4 -m fluxsr_cli batch photos -o photos_x4

    Examples:
      fluxsr batch photos -o photos_x4 --recursive --report report.json
      fluxsr batch scans -o out --include "*.tif" --suffix _x4 --ext png
    """
    from fluxsr_cli.atomic import sweep_temporaries
    from fluxsr_cli.processes import default_processes
    from fluxsr_cli.upscale.batch import BatchConfig, plan_batch, run_batch

    config = BatchConfig(
        input_dir=src, output_dir=output, recursive=recursive, include=tuple(include or ()),
        exclude=tuple(exclude or ()), suffix=suffix, ext=ext, scale=scale, max_pixels=int(max_pixels * 1e6),
        quality=quality, strip_metadata=strip_metadata, keep_mode=not rgb, overwrite=overwrite, report=report)
    procs = default_processes()
    main = procs.index == 0
    loading = mo.model_options(model=model, revision=revision, base=base, vae=vae, offline=offline,
                               device=device or procs.device, dtype=dtype, t_l=t_l, guidance=guidance,
                               offload=offload, compile=compile, quantize=quantize)
    options = mo.upscale_options(scale=scale, tile=tile, overlap=overlap, blend=blend,
                                 tile_batch=tile_batch, tile_space=tile_space, vae_tile=vae_tile, color_fix=color_fix)
    jobs = plan_batch(config)  # bad folders fail before minutes of model loading
    pending = sum(j.status == "pending" for j in jobs)
    if dry_run:
        if main:
            _print_plan(jobs, config.output_dir, sweep_temporaries(config.output_dir, dry_run=True))
        return
    with rich_progress(enabled=None if main else False) as progress:
        fn = None
        if pending:
            from fluxsr_cli.upscale.restore import load_upscaler

            upscaler = load_upscaler(loading, progress, notice=note)
            if main:  # what the pending files will take, before they start
                note(upscaler.cost(_outputs(jobs, scale), options).across(procs.count).line())
            fn = functools.partial(upscaler.upscale_array, options=options, progress=progress, notice=note)
        result = run_batch(config, fn, progress, jobs=jobs, processes=procs)
    if main:
        _print_report(result)
    if result.failed:
        raise typer.Exit(1)


def _outputs(jobs, scale: int) -> list[tuple[int, int, str, int]]:
    """(width, height, suffix, bits) of each pending output, from the inputs' headers (unreadable ones left out)."""
    from fluxsr_cli.errors import FluxSRError
    from fluxsr_cli.images.reading import image_size

    found = []
    for job in jobs:
        if job.status == "pending":
            try:
                width, height = image_size(job.src)
            except FluxSRError:
                continue  # reported when its turn comes
            found.append((width * scale, height * scale, job.dst.suffix, 8))
    return found


def _print_plan(jobs, output: Path, temporaries: list[Path]) -> None:
    table = Table(title=f"plan: {len(jobs)} files -> {output}")
    for col in ("input", "output", "action"):
        table.add_column(col)
    for j in jobs:
        action = "upscale" if j.status == "pending" else f"{j.status}: {j.reason}"
        table.add_row(j.rel, j.dst.relative_to(output).as_posix(), action)
    out.print(table)
    for path in temporaries:  # what killed runs left: one greppable line each
        out.print(f"remove: {path} (temporary file of a killed run)", soft_wrap=True, markup=False,
                  highlight=False)


def _print_report(report) -> None:
    problems = [f for f in report.files if f.status == "failed" or f.notes]
    if problems and not out.is_terminal:  # a log: one greppable line per file, never wrapped
        for f in problems:
            out.print(f"{f.status}: {f.rel or f.src}: {f.reason or '; '.join(f.notes)}", soft_wrap=True)
    elif problems:
        table = Table(title="files with failures or notes")
        for col in ("file", "status", "reason / notes"):
            table.add_column(col, overflow="fold")
        for f in problems:
            table.add_row(f.rel or f.src, f.status, f.reason or "; ".join(f.notes),
                          style="red" if f.status == "failed" else None)
        out.print(table)
    done = [f for f in report.files if f.status == "done"]
    per_image = sum(f.seconds for f in done) / len(done) if done else 0.0
    summary = Table(title="fluxsr batch")
    for col in ("done", "skipped", "failed", "time", "per image", "temporaries removed"):
        summary.add_column(col, justify="right")
    summary.add_row(str(report.done), str(report.skipped), Text(str(report.failed), style="red" if report.failed else ""),
                    f"{report.seconds:.1f} s", f"{per_image:.2f} s", str(report.removed))
    out.print(summary)
