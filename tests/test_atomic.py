"""Temporaries that say who made them, and the sweep that removes those of killed runs (fluxsr_cli.atomic)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxsr_cli.atomic import (
    OTHER_HOST_AGE_S,
    Temporary,
    atomic_path,
    finish_temporary,
    is_stale,
    make_temporary,
    parse_temporary,
    pid_alive,
    sweep_temporaries,
    sweep_temporaries_of,
    temporary_name,
    this_host,
)
from tests.blocked_writer import posix_only

NAME = ".p04.fluxsr-part.gpu-7.48213.9f3a61c2.png"


def dead_pid() -> int:
    """The id of a process that ran and was reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(folder: Path, name: str, age_s: float = 0.0, is_dir: bool = False) -> Path:
    """A file (or a folder holding one) named ``name``, last changed ``age_s`` ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if is_dir:
        path.mkdir()
        (path / "part.bin").write_bytes(b"x")
        os.utime(path / "part.bin", (time.time() - age_s,) * 2)
    else:
        path.write_bytes(b"half")
    os.utime(path, (time.time() - age_s,) * 2)
    return path


def test_a_name_says_who_made_it_and_what_it_becomes():
    assert parse_temporary(NAME) == Temporary("p04", "gpu-7", 48213, "9f3a61c2", ".png")
    assert temporary_name("p04", ".png", host="gpu-7", pid=48213, token="9f3a61c2") == NAME
    # a folder's name has no suffix; stems with dots, spaces and accents come back whole
    assert parse_temporary(".step-0000002.fluxsr-part.node1.7.00ff00ff") == Temporary(
        "step-0000002", "node1", 7, "00ff00ff", "")
    assert parse_temporary(".chat à l'été.v2.fluxsr-part.h.1.abcdef01.jpeg").label == "chat à l'été.v2"
    assert parse_temporary(".x.fluxsr-part.h.1.abcdef01.safetensors").suffix == ".safetensors"


@pytest.mark.parametrize("name", [
    ".p04.k8z8qjc4.part.png",  # tempfile's names, as earlier versions made them: no host, no process
    "p04.fluxsr-part.gpu-7.48213.9f3a61c2.png",  # not hidden
    ".p04.fluxsr-part.gpu-7.48213.9F3A61C2.png",  # the token is lower-case hex
    ".p04.fluxsr-part.gpu-7.48213.9f3a61c.png",  # 7 digits
    ".p04.fluxsr-part.gpu.7.48213.9f3a61c2.png",  # a dot in the host
    ".p04.fluxsr-part.gpu-7.pid.9f3a61c2.png",
    ".p04.fluxsr-part..48213.9f3a61c2.png",
    ".DS_Store",
    ".fluxsr-probe",
    "photo.png",
])
def test_other_names_are_not_ours(name):
    assert parse_temporary(name) is None


def test_this_host_fits_the_pattern(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-7.cluster.example.org")
    assert this_host() == "gpu-7-cluster-example-org"
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert parse_temporary(temporary_name("a", ".png")).host == "host"


def test_made_temporaries_keep_the_suffix_and_parse_back(tmp_path):
    final = tmp_path / ("a" * 60 + ".webp")
    tmp = make_temporary(final)
    temp = parse_temporary(tmp.name)
    assert tmp.parent == tmp_path and tmp.is_file() and tmp.suffix == ".webp"
    assert (temp.label, temp.host, temp.pid, temp.suffix) == ("a" * 40, this_host(), os.getpid(), ".webp")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp)  # Pillow picks WebP from the suffix
    with Image.open(tmp) as im:
        assert im.format == "WEBP"
    finish_temporary(tmp, final)
    assert final.is_file() and not tmp.exists()
    folder = make_temporary(tmp_path / "ckpt.v1", folder=True)
    assert folder.is_dir() and folder.parent == tmp_path
    assert (parse_temporary(folder.name).label, parse_temporary(folder.name).suffix) == ("ckpt.v1", "")


def never(pid: int) -> bool:
    raise AssertionError("another host's process ids mean nothing here")


def test_the_liveness_decision():
    mine, theirs = Temporary("a", "here", 10, "00000000", ".png"), Temporary("a", "there", 10, "00000000", ".png")
    started = 1_000_000.0
    assert not is_stale(mine, 0.0, started=started, host="here", alive=lambda pid: pid == 10)
    assert is_stale(mine, started, started=started, host="here", alive=lambda pid: pid != 10)
    # another host: only its age counts; newer than the run's start (or just before it) is left alone
    assert not is_stale(theirs, started + 5, started=started, host="here", alive=never)
    assert not is_stale(theirs, started - OTHER_HOST_AGE_S + 1, started=started, host="here", alive=never)
    assert is_stale(theirs, started - OTHER_HOST_AGE_S - 1, started=started, host="here", alive=never)


@posix_only
def test_pid_alive_asks_the_system():
    assert pid_alive(os.getpid()) and pid_alive(1)  # pid 1 runs, possibly as another user
    assert not pid_alive(dead_pid())
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(proc.pid)
        proc.kill()
        time.sleep(0.5)  # killed, not yet reaped: a zombie writes nothing
        if Path(f"/proc/{proc.pid}/stat").exists():
            assert not pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@posix_only
def test_the_sweep_removes_only_the_temporaries_of_gone_writers(tmp_path):
    host, dead = this_host(), dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "out"
        gone = [
            plant(out / "sub", temporary_name("a", ".png", pid=dead)),
            plant(out, temporary_name("step-0000002", pid=dead), is_dir=True),
            plant(out, temporary_name("b", ".png", host="elsewhere", pid=live.pid), age_s=2 * OTHER_HOST_AGE_S),
            plant(out, temporary_name("c", ".png")),  # this process's id, but not one it is writing (a restart)
        ]
        kept = [
            plant(out, temporary_name("d", ".png", pid=live.pid)),  # its writer runs
            plant(out, temporary_name("e", ".png", host="elsewhere", pid=dead)),  # another host, newer than start
            plant(out, temporary_name("f", host="elsewhere", pid=dead), age_s=2 * OTHER_HOST_AGE_S, is_dir=True),
            make_temporary(out / "g.png"),  # being written by this process
            plant(out, ".p04.k8z8qjc4.part.png"),  # not our pattern
            plant(out / ".hidden", temporary_name("h", ".png", pid=dead)),  # never written by fluxsr
            plant(out, "i.png"),
        ]
        os.utime(kept[2] / "part.bin")  # a folder from another host is alive while anything in it changes
        assert host != "elsewhere"
        started = time.time()
        assert sorted(sweep_temporaries(out, started=started, dry_run=True)) == sorted(gone)
        assert all(p.exists() for p in gone + kept)
        assert sorted(sweep_temporaries(out, started=started)) == sorted(gone)
        assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)
        finish_temporary(kept[3])
        assert sweep_temporaries(out) == [] and sweep_temporaries(tmp_path / "missing") == []
    finally:
        live.kill()
        live.wait()


@posix_only
def test_sweeping_one_output_touches_only_its_own_temporaries(tmp_path):
    dead = dead_pid()
    own = [plant(tmp_path, temporary_name("photo_x4", ".png", pid=dead)),
           plant(tmp_path, temporary_name("ckpt.v1", pid=dead), is_dir=True)]
    others = [plant(tmp_path, temporary_name("photo_x4", ".jpg", pid=dead)),
              plant(tmp_path, temporary_name("other", ".png", pid=dead)),
              plant(tmp_path / "sub", temporary_name("photo_x4", ".png", pid=dead))]
    assert sweep_temporaries_of(tmp_path / "photo_x4.png") == [own[0]]
    assert sweep_temporaries_of(tmp_path / "ckpt.v1") == [own[1]]
    assert not any(p.exists() for p in own) and all(p.exists() for p in others)


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.png") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["b.txt"] and (tmp_path / "b.txt").read_text() == "whole"
