"""A fluxsr job in a child process that stops inside a write, to be killed there with SIGKILL.

The child wraps a writer (Pillow's ``Image.save`` unless told otherwise): its ``block_at``-th call
writes into the temporary it was given (a file is then cut to half), reports that path and sleeps
until it is killed, as an out-of-memory kill or a preempted job would stop it: no exception, no
clean-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")

CHILD = """
import importlib, sys, time
from pathlib import Path

ready, block_at, module, owner, name = Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
cls = getattr(importlib.import_module(module), owner)
write, calls = getattr(cls, name), [0]

def blocking_write(self, path, *args, **kwargs):  # a method whose first argument is the path written
    calls[0] += 1
    result = write(self, path, *args, **kwargs)
    if calls[0] == block_at:
        if Path(path).is_file():
            with open(path, "r+b") as f:
                f.truncate(Path(path).stat().st_size // 2)  # half a file, as a kill mid-write leaves it
        ready.write_text(str(path))
        time.sleep(600)  # until SIGKILL
    return result

setattr(cls, name, blocking_write)
"""


@contextlib.contextmanager
def blocked_writer(code: str, block_at: int, workdir: Path, writer: str = "PIL.Image:Image.save",
                   timeout: float = 180.0) -> Iterator[Path]:
    """Run ``code`` (Python, after the patch) in a child until its ``block_at``-th call of ``writer``
    (``module:Class.method``, whose first argument is the path it writes).

    Yields the temporary the child is writing while the child still runs; on leaving, the child is
    killed with SIGKILL and reaped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"ready-{time.monotonic_ns()}.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    module, method = writer.split(":")
    proc = subprocess.Popen([sys.executable, "-c", CHILD + code, str(ready), str(block_at), module,
                             *method.split(".")], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists() or not ready.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"the child ended before write {block_at}:\n{proc.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the child did not reach write {block_at} in {timeout:.0f} s")
            time.sleep(0.05)
        yield Path(ready.read_text())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        ready.unlink(missing_ok=True)
    assert proc.returncode == -signal.SIGKILL


def listing(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, hidden ones included, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
