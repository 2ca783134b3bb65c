"""`fluxsr distill --config ftd.toml`: Flow Trajectory Distillation; `fluxsr distill export RUN -o CKPT`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fluxsr_cli.cli.common import console, handle_errors, note, out, parse_overrides, rich_progress

app = typer.Typer(no_args_is_help=False)  # help: the callback's docstring (with its examples)


@app.callback(invoke_without_command=True)
@handle_errors
def distill(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML file with a \\[distill] section (e.g. configs/ftd.toml).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE (repeatable).")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="'latest' or a checkpoint folder to continue from.")]
    = None,
) -> None:
    """Train the one-step student on pairs from `fluxsr pairs` (runs under `accelerate launch` too).

    Examples:
      fluxsr distill --config configs/ftd.toml
      fluxsr distill --config configs/ftd.toml --set lora_rank=32 --set max_steps=2000 --resume latest
      accelerate launch --multi_gpu --num_processes 8 -m fluxsr_cli distill --config configs/ftd.toml
    """
    if ctx.invoked_subcommand is not None:
        return
    from fluxsr_cli.train.config import load_distill_config
    from fluxsr_cli.train.loop import distill as run_distill

    if config is None:
        console.print("give --config FILE (see configs/ftd.toml); `fluxsr distill --help` lists the options")
        raise typer.Exit(2)
    cfg = load_distill_config(config, parse_overrides(set_))
    with rich_progress() as progress:
        result = run_distill(cfg, resume=resume, progress=progress, notice=note)
    from rich.table import Table

    table = Table(title=f"distill: {result.run_dir}",
                  caption=f"temporaries of killed runs removed: {result.removed}")
    for col in ("step", "loss", "ftd", "rec", "adl", "lr"):
        table.add_column(col, justify="right")
    for rec in result.history[-3:]:
        table.add_row(str(rec["step"]), *(f"{rec[k]:.4g}" if k in rec else "-" for k in ("loss", "ftd", "rec", "adl", "lr")))
    out.print(table)
    if result.validation:
        v = result.validation[-1]
        out.print(f"held-out one-step latent error {v['one_step_error']:.4f} (identity z_L: {v['identity_error']:.4f})")
    if result.exported:
        out.print(f"exported {result.exported} (use: fluxsr upscale IN -o OUT --model {result.exported})")


@app.command("export")
@handle_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A distill run folder (output_dir).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint folder to write.", show_default=False)],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="A step-* folder (default: the latest).")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    eval_: Annotated[list[Path] | None, typer.Option("--eval", help="A `fluxsr eval --json` result for the model "
                                                      "card's table (repeatable).")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="A before/after picture for the model card "
                                               "(default: the run's last validation grid).")] = None,
    base_id: Annotated[str | None, typer.Option("--base-id", help="Hub id of the base, when the run read it from "
                                                "a local folder (e.g. black-forest-labs/FLUX.1-dev).")] = None,
    push_to_hub: Annotated[str | None, typer.Option("--push-to-hub", help="Also upload the checkpoint to this Hub "
                                                    "model repo (NAMESPACE/NAME), as one commit.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the --push-to-hub repo private.")] = False,
) -> None:
    """Write the fluxsr checkpoint format that `fluxsr upscale --model` loads, with a model card (README.md).

    Examples:
      fluxsr distill export runs/ftd -o my-fluxsr
      fluxsr distill export runs/ftd --checkpoint runs/ftd/checkpoints/step-0002000 -o my-fluxsr-2k
      fluxsr distill export runs/ftd -o my-fluxsr --eval realsr.json --push-to-hub me/my-fluxsr --private
    """
    from fluxsr_cli.train.checkpoints import export_checkpoint, push_checkpoint
    from fluxsr_cli.train.model_card import CardOptions

    card = CardOptions(evals=tuple(eval_ or ()), image=image, repo_id=push_to_hub, base_id=base_id)
    path = export_checkpoint(run_dir, output, checkpoint=checkpoint, overwrite=overwrite, card=card)
    out.print(f"wrote {path}")
    if push_to_hub:
        console.print(f"uploading {path} to {push_to_hub}")
        out.print(f"uploaded to {push_checkpoint(path, push_to_hub, private=private)}")
