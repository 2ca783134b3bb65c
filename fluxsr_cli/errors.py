"""The one exception hierarchy of the library.

The CLI maps each class to a one-line message and an exit code; the traceback is shown only with
``--debug``. Messages name the file or setting at fault and say what to do.
"""

from __future__ import annotations


class FluxSRError(Exception):
    """Base class of every error the library raises on purpose."""

    exit_code = 1


class InputError(FluxSRError):
    """A bad input file, folder or option value (unreadable image, existing output, ...)."""

    exit_code = 2


class ConfigError(FluxSRError):
    """A configuration file or value that cannot be used."""

    exit_code = 2


class CheckpointError(FluxSRError):
    """A model or checkpoint that cannot be found, downloaded or loaded."""

    exit_code = 3


class ResourceError(FluxSRError):
    """Not enough memory, no suitable device, or a run that cannot fit."""

    exit_code = 4


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
