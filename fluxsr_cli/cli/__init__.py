"""The ``fluxsr`` command: a thin Typer layer over the library, one file per command.

Each command parses its options, builds a config, calls one library function and shows progress
and a result; ``common.py`` maps library errors to one line and an exit code. Open ``upscale.py``
first. The top of the house: it may import every wing, and no wing imports it.
"""

from __future__ import annotations

import typer

from fluxsr_cli import __version__
from fluxsr_cli.cli import batch, degrade, demo, distill, download, evaluate, info, pairs, upscale
from fluxsr_cli.cli.common import STATE

app = typer.Typer(
    name="fluxsr",
    help="One-step real-world x4 super-resolution with FLUX (FluxSR, Flow Trajectory Distillation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fluxsr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["debug"] = debug


app.command("upscale")(upscale.upscale)
app.command("batch")(batch.batch)
app.command("degrade")(degrade.degrade)
app.command("pairs")(pairs.pairs)
app.add_typer(distill.app, name="distill")
app.command("eval")(evaluate.evaluate)
app.command("info")(info.info)
app.command("download")(download.download)
app.command("demo")(demo.demo)


def main() -> None:
    import os
    import sys

    # transformers/diffusers log import-time notes (e.g. "requires torchvision") that mean nothing to
    # a user of this tool; fluxsr reports what matters itself. --debug shows them again.
    if "--debug" not in sys.argv:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    app()
