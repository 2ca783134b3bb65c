"""Atomic file writes: a crash or a full disk never leaves half a file under the final name.

Everything is written to a temporary file (or folder) beside the destination, flushed, then renamed
into place (``os.replace`` is atomic on POSIX and Windows within one file system).

A killed process (SIGKILL: an out-of-memory kill, a preempted job) cannot remove its temporary, so
every temporary says who made it::

    .<label>.fluxsr-part.<host>.<pid>.<token><suffix>      .p04.fluxsr-part.gpu-7.48213.9f3a61c2.png

(``label``: the final name's stem, ``suffix``: its suffix, kept so that Pillow and OpenCV pick the
format from it; folders have none). :func:`parse_temporary` reads such a name back and
:func:`sweep_temporaries`, run by a job's main process before any work starts, removes those of
earlier runs whose writer is gone: on this host, its process no longer runs; from another host
(a shared file system), it has not changed for :data:`OTHER_HOST_AGE_S` before the run's start.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fluxsr_cli.errors import InputError

MARK = "fluxsr-part"
LABEL_CHARS = 40  # of the final name's stem; names stay far below the 255-byte limit
OTHER_HOST_AGE_S = 15 * 60.0  # another host's temporary unchanged this long before the run started is dead
_NAME = re.compile(
    rf"^\.(?P<label>.*)\.{MARK}\.(?P<host>[A-Za-z0-9-]{{1,63}})\.(?P<pid>[0-9]{{1,10}})"
    r"\.(?P<token>[0-9a-f]{8})(?P<suffix>\.[^./\\]+)?$",
    re.DOTALL,
)
_WRITING: set[str] = set()  # names of this process's temporaries still being written (their tokens differ)


@dataclass(frozen=True)
class Temporary:
    """What a temporary's name says: who writes it (host, process id) and what it becomes."""

    label: str  # the final name's stem, cut to LABEL_CHARS
    host: str  # this_host() of the writer
    pid: int
    token: str  # 8 random hex digits: names never repeat
    suffix: str  # the final name's suffix ("" for folders)


def this_host() -> str:
    """The host name as it appears in temporary names: letters, digits and '-', at most 63."""
    name = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()).strip("-")[:63]
    return name or "host"


def temporary_name(label: str, suffix: str = "", *, host: str | None = None, pid: int | None = None,
                   token: str | None = None) -> str:
    """The name of a temporary for a final name of stem ``label`` and ``suffix``, made by this process."""
    return (f".{label[:LABEL_CHARS]}.{MARK}.{host or this_host()}.{os.getpid() if pid is None else pid}"
            f".{token or secrets.token_hex(4)}{suffix}")


def parse_temporary(name: str) -> Temporary | None:
    """The parts of a temporary's name, or None for any other name (nothing else is ever removed)."""
    m = _NAME.match(name)
    if m is None:
        return None
    return Temporary(m["label"], m["host"], int(m["pid"]), m["token"], m["suffix"] or "")


def is_stale(temp: Temporary, changed: float, *, started: float, host: str,
             alive: Callable[[int], bool]) -> bool:
    """Whether the writer of ``temp`` (last changed at ``changed``, epoch seconds) is gone.

    On this ``host`` the writer is gone when ``alive(pid)`` says its process no longer runs. A
    process id says nothing about another host's processes: that temporary is gone only when it
    has not changed for :data:`OTHER_HOST_AGE_S` before the run ``started`` (a live writer keeps
    changing its file; the margin also covers clocks that differ between hosts).
    """
    if temp.host == host:
        return not alive(temp.pid)
    return changed < started - OTHER_HOST_AGE_S


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` runs on this host (zombies do not; unknown counts as alive)."""
    if pid <= 0 or os.name == "nt":  # Windows' os.kill(pid, 0) would end the process: never guess there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    with contextlib.suppress(OSError, IndexError):  # Linux: a killed, unreaped process writes nothing
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    return True


def _writer_alive(path: Path) -> Callable[[int], bool]:
    """``alive`` for :func:`is_stale`: this process knows its own temporaries (after a container restart
    a new process can have the old one's id); any other process id is asked of the system."""
    return lambda pid: path.name in _WRITING if pid == os.getpid() else pid_alive(pid)


def _last_change(path: Path) -> float:
    """The newest modification time of a file, or of a folder and everything in it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def sweep_temporaries(root: Path, *, started: float | None = None, of: Path | None = None,
                      dry_run: bool = False) -> list[Path]:
    """Remove the temporaries of earlier runs under ``root``; return them (with ``dry_run``: only list them).

    Only names :func:`parse_temporary` reads are touched, and only those :func:`is_stale` finds dead
    (``started``: the run's start, default now). The tree is walked without following links or
    entering hidden folders (outputs are never written there). ``of``: only the temporaries of this
    one final path, in its folder (``fluxsr upscale -o OUT``, an exported checkpoint).
    """
    root = Path(root).absolute()
    started = time.time() if started is None else started
    host = this_host()
    found: list[Path] = []
    # the (label, suffix) of a file's temporaries, and of a folder's
    mine = {(of.stem[:LABEL_CHARS], of.suffix), (of.name[:LABEL_CHARS], "")} if of is not None else set()
    if not root.is_dir():
        return found
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in [*dirs, *files]:
            temp = parse_temporary(name)
            if temp is None or (of is not None and (temp.label, temp.suffix) not in mine):
                continue
            path = here / name
            try:
                stale = is_stale(temp, _last_change(path), started=started, host=host, alive=_writer_alive(path))
            except OSError:  # gone meanwhile
                continue
            if stale:
                found.append(path)
        dirs[:] = [] if of is not None else sorted(d for d in dirs if not d.startswith("."))
    for path in [] if dry_run else found:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise InputError(f"{path}: cannot remove this temporary of a killed run ({e.strerror}); "
                             "remove it by hand") from None
    return found


def sweep_temporaries_of(path: Path, *, started: float | None = None, dry_run: bool = False) -> list[Path]:
    """The stale temporaries of the one final ``path`` (in its folder): see :func:`sweep_temporaries`."""
    path = Path(path).absolute()
    return sweep_temporaries(path.parent, started=started, of=path, dry_run=dry_run)


def make_temporary(path: Path, folder: bool = False) -> Path:
    """Create an empty temporary file (or folder) beside ``path``, named for this process.

    It counts as this process's own until :func:`finish_temporary`, so no sweep in this process
    removes it. Permissions are the usual ones (the umask applies).
    """
    path = Path(path).absolute()
    while True:
        tmp = path.parent / (temporary_name(path.name) if folder else temporary_name(path.stem, path.suffix))
        if tmp.name in _WRITING:  # one name per temporary this process is writing, in any folder
            continue
        try:
            if folder:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        _WRITING.add(tmp.name)
        return tmp


def finish_temporary(tmp: Path, path: Path | None = None) -> None:
    """Rename ``tmp`` to ``path`` (None: remove it instead); either way it is no longer being written."""
    tmp = Path(tmp).absolute()
    try:
        if path is not None:
            os.replace(tmp, path)
        elif tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
    finally:
        _WRITING.discard(tmp.name)


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
    choose the right format. On any error the temporary file is removed and ``path`` is untouched;
    after a kill, the next run's :func:`sweep_temporaries` removes it.
    """
    path = Path(path)
    check_writable(path, overwrite)
    tmp = make_temporary(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if not overwrite and path.exists():
            raise InputError(f"{path}: output appeared while writing; pass --overwrite to replace it")
        finish_temporary(tmp, path)
    except BaseException:
        finish_temporary(tmp)
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
