"""Progress reporting: the library calls a plain callback, only the CLI draws bars."""

from __future__ import annotations

from collections.abc import Callable

# progress(stage, done, total): ``stage`` names the work ("tiles", "files", "download", ...),
# ``done`` of ``total`` units are finished. ``total`` may be 0 when unknown.
ProgressFn = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default callback: report nothing."""
