"""What every command shares: the console, error mapping and Rich progress for library callbacks."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fluxsr_cli.errors import FluxSRError
from fluxsr_cli.progress import ProgressFn

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)

STATE = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and the error's exit code.

    With ``--debug`` the traceback is printed too. Other exceptions are bugs: they propagate.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FluxSRError as e:
            if STATE["debug"]:
                console.print_exception()
            # escaped: a message's own brackets (pip install "fluxsr[demo]") are text, not Rich markup
            console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, markup=True, highlight=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished outputs are kept; rerun to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def note(message: str) -> None:
    """A library notice on stderr, as plain text after a yellow ``note:``."""
    console.print("[yellow]note:[/] ", end="")
    console.print(message, soft_wrap=True, markup=False, highlight=False)


@contextlib.contextmanager
def rich_progress(transient: bool = False, enabled: bool | None = None) -> Iterator[ProgressFn]:
    """A Rich progress display driven by the library's ``progress(stage, done, total)`` callback.

    Each distinct ``stage`` gets its own bar; a total of 0 shows a spinner.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    bars = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not enabled,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total or None)
        bars.update(tasks[stage], completed=done, total=total or None)

    with bars:
        yield update


def parse_overrides(items: list[str] | None) -> list[str]:
    """``--set key=value`` options, passed on to :func:`fluxsr_cli.configs.with_overrides`."""
    return list(items or [])
