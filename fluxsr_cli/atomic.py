"""Atomic file writes: a crash or a full disk never leaves half a file under the final name.

Everything is written to a temporary file in the destination folder, flushed, then renamed into
place (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from fluxsr_cli.errors import InputError


def check_writable(path: Path, overwrite: bool) -> None:
    """Raise :class:`InputError` when ``path`` exists (and ``overwrite`` is off) or cannot be made."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output exists; pass --overwrite to replace it or choose another name")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{parent}: cannot create the output folder ({e.strerror}); choose another place") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent}: folder is not writable; choose another output place")


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    The temporary file keeps ``path``'s suffix so that writers that look at it (Pillow, OpenCV)
    choose the right format. On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_writable(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem[:40]}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if not overwrite and path.exists():
            raise InputError(f"{path}: output appeared while writing; pass --overwrite to replace it")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: Path, write: Callable[[Path], None], overwrite: bool = True) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(Path(path), overwrite=overwrite) as tmp:
        write(tmp)


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = True) -> None:
    with atomic_path(Path(path), overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"), overwrite=overwrite)
