"""`fluxsr eval` (not written yet)."""

from __future__ import annotations

import typer

from fluxsr_cli.cli.common import handle_errors


@handle_errors
def evaluate() -> None:
    """Not available yet."""
    raise typer.Exit(1)
