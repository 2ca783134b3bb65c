"""`fluxsr distill` (not written yet)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Flow Trajectory Distillation into the one-step model.", no_args_is_help=True)


@app.command("run")
def run() -> None:
    """Not available yet."""
    raise typer.Exit(1)
