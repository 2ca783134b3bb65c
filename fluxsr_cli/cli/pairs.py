"""`fluxsr pairs`: generate the teacher's noise-image pairs for FTD (the `[pairs]` section of ftd.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fluxsr_cli.cli.common import console, handle_errors, labelled, note, out, parse_overrides, rich_progress

Config = Annotated[Path, typer.Option("--config", "-c", help="TOML file with a \\[pairs] section (e.g. configs/ftd.toml).")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a \\[pairs] setting: KEY=VALUE (repeatable).")]
Offload = Annotated[str | None, typer.Option("--offload", help="none, model or sequential CPU offload (smaller GPUs).")]
Quantize = Annotated[str | None, typer.Option("--quantize", help="The teacher's transformer weights: none, fp8, "
                                                                 "fp8-compute or nf4 (smaller GPUs; built once, cached).")]
Rank = Annotated[int | None, typer.Option("--rank", help="This process's rank when not launched by accelerate.")]
WorldSize = Annotated[int | None, typer.Option("--world-size", help="Number of processes sharing the items (with --rank).")]


@handle_errors
def pairs(config: Config, overrides: Overrides = None, offload: Offload = None, quantize: Quantize = None,
          rank: Rank = None, world_size: WorldSize = None) -> None:
    """Sample the teacher, degrade its images and store eps, z_0, z_L, HQ and LQ per item (resumable).

    Settings come from the \\[pairs] section of the config; rerun the same command to resume.

    Examples:
      fluxsr pairs --config configs/ftd.toml
      fluxsr pairs --config configs/ftd.toml --set num_pairs=100 --set output=data/try --quantize fp8
      accelerate launch --num_processes 8 -m fluxsr_cli pairs --config configs/ftd.toml
    """
    from fluxsr_cli.configs import load_config
    from fluxsr_cli.model.hub import FLUX_LICENCE_NOTE
    from fluxsr_cli.train.pairs import PairsConfig, generate_pairs

    console.print(labelled("licence:", "yellow", FLUX_LICENCE_NOTE), soft_wrap=True)
    settings = parse_overrides(overrides) + ([f"offload={offload}"] if offload is not None else []) + (
        [f"quantize={quantize}"] if quantize is not None else [])
    cfg = load_config(PairsConfig, config, "pairs", settings)
    _quiet_libraries()
    with rich_progress() as progress:
        summary = generate_pairs(cfg, progress, notice=note, rank=rank, world_size=world_size)

    from rich.table import Table

    table = Table(title=f"pairs: {summary.output}")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    rows = [
        ("process", f"{summary.rank + 1} of {summary.world_size}"),
        ("items of this process", str(summary.assigned)),
        ("already finished", str(summary.skipped)),
        ("generated now", str(summary.generated)),
        ("temporaries of killed runs removed", str(summary.removed) if summary.rank == 0 else "(by process 1)"),
        ("seconds per pair", f"{summary.seconds_per_pair:.2f}" if summary.generated else "-"),
        ("items in manifest.jsonl", str(summary.in_manifest) if summary.merged else "(merged by process 1)"),
        ("requested", str(cfg.num_pairs)),
        ("disk use", f"{summary.disk_bytes / 1e6:.1f} MB"),
        ("time", f"{summary.seconds:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    if summary.merged and summary.in_manifest < cfg.num_pairs:
        console.print(labelled("incomplete:", "yellow", f"{cfg.num_pairs - summary.in_manifest} items missing "
                               "(other processes still running?); rerun the same command to finish"), soft_wrap=True)


def _quiet_libraries() -> None:
    """Only our Rich bars: no tqdm bars or truncation warnings from diffusers/transformers."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
