"""Progress and notices: the library calls plain callbacks, only the CLI draws bars and prints."""

from __future__ import annotations

from collections.abc import Callable

# progress(stage, done, total): ``stage`` names the work ("tiles", "files", "download", ...),
# ``done`` of ``total`` units are finished. ``total`` may be 0 when unknown.
ProgressFn = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default callback: report nothing."""


# notice(message): a one-line note for the user (a download starting, a licence, a smaller tile)
Notice = Callable[[str], None]


def no_notice(message: str) -> None:
    """The default callback: say nothing."""
