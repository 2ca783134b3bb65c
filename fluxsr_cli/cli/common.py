"""What every command shares: the console, error mapping and Rich progress for library callbacks.

Both consoles print strings as they are: no Rich markup, no emoji codes. Errors, notes and file names
come from the library and the user, and hold brackets (``[eval]``, ``[distill]``, ``photo[x].png``)
that markup would eat. Our own fixed styling is a :class:`rich.text.Text` with a style (see
:func:`labelled`), never markup inside a string.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from fluxsr_cli.errors import FluxSRError
from fluxsr_cli.progress import ProgressFn


def make_console(**kwargs: Any) -> Console:
    """A console that prints strings as they are (no markup, emoji codes or highlighting)."""
    return Console(highlight=False, markup=False, emoji=False, **kwargs)


console = make_console(stderr=True)
out = make_console()

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
            console.print(labelled("error:", "bold red", str(e)), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print(labelled("interrupted:", "yellow", "finished outputs are kept; rerun to resume"), soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def labelled(label: str, style: str, message: str) -> Text:
    """``label`` in ``style``, a space, then ``message`` as plain text (never parsed as markup)."""
    return Text.assemble((label, style), " ", message)


def note(message: str) -> None:
    """A library notice on stderr, as plain text after a yellow ``note:``."""
    console.print(labelled("note:", "yellow", message), soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr, as plain text after a yellow ``warning:``."""
    console.print(labelled("warning:", "yellow", message), soft_wrap=True)


@contextlib.contextmanager
def rich_progress(transient: bool = False, enabled: bool | None = None) -> Iterator[ProgressFn]:
    """A Rich progress display driven by the library's ``progress(stage, done, total)`` callback.

    Each distinct ``stage`` gets its own bar; a total of 0 shows a spinner.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),  # a stage may name a file
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
