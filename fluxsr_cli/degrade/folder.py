"""Degrade a folder of HQ images into LR PNGs and a ``degradations.jsonl`` record (``fluxsr degrade``).

Every image gets its own seed, derived from the root seed and its path relative to the HQ folder,
so its LR image does not depend on which other files are there or in what order they run. Each
finished image appends one JSON line: ``file`` (relative path of the HQ image), ``lq`` (relative
path of the LR PNG), ``seed``, ``hq_size``, ``lq_size`` and every drawn parameter
(:meth:`fluxsr_cli.degrade.pipeline.Degradation.to_dict`).

Resumable: the temporaries a killed run left are removed first
(:func:`fluxsr_cli.atomic.sweep_temporaries`), an LR PNG that exists is skipped unless ``overwrite``;
the settings and root seed are saved in ``degrade_config.toml`` beside the outputs, and a rerun with
other settings into the same folder is refused (pass ``overwrite`` to start it over). Unreadable
images are reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxsr_cli.atomic import atomic_path, atomic_write_text, sweep_temporaries
from fluxsr_cli.configs import dumps_toml, read_toml, to_dict
from fluxsr_cli.degrade.config import DegradeConfig
from fluxsr_cli.errors import InputError
from fluxsr_cli.images.reading import READ_SUFFIXES, read_image
from fluxsr_cli.progress import ProgressFn, no_progress

RECORDS_NAME = "degradations.jsonl"
CONFIG_NAME = "degrade_config.toml"


@dataclass(frozen=True)
class FolderResult:
    """What :func:`degrade_folder` did."""

    lq_dir: Path
    total: int  # images found
    written: int  # LR images made in this run
    skipped: int  # LR images already there (resumed)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    unrecorded: list[str] = field(default_factory=list)  # existing LR images without a record line
    seconds: float = 0.0
    removed: int = 0  # temporaries of earlier (killed) runs removed first

    @property
    def records(self) -> Path:
        return self.lq_dir / RECORDS_NAME


def image_seed(root_seed: int, relative: str) -> int:
    """A 63-bit seed for one image from the root seed and its relative POSIX path."""
    digest = hashlib.sha256(f"{root_seed}:{relative}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def list_images(hq_dir: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files under ``hq_dir`` (sorted, hidden files left out), skipping the folder ``exclude``."""
    pattern = "**/*" if recursive else "*"
    found = []
    for p in sorted(hq_dir.glob(pattern)):
        rel = p.relative_to(hq_dir)
        if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in READ_SUFFIXES:
            continue
        if exclude is not None and exclude in p.parents:
            continue
        if p.is_file():
            found.append(p)
    return found


def _write_png(path: Path, lq_u8: Any, overwrite: bool) -> None:
    """Write an 8-bit RGB array ``[h, w, 3]`` as PNG, atomically."""
    from PIL import Image

    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(lq_u8, mode="RGB").save(tmp, format="PNG")


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The last record per ``lq`` file; a torn last line (a crash) is ignored."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "lq" in rec:
            records[rec["lq"]] = rec
    return records


def _append_record(path: Path, record: dict[str, Any]) -> None:
    with path.open("a+", encoding="utf-8") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # start on a fresh line if a crash left half a line
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                f.write("\n")
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _check_settings(lq_dir: Path, config: DegradeConfig, seed: int, overwrite: bool) -> None:
    """Save the settings beside the outputs; refuse to mix outputs of other settings."""
    settings = {"seed": seed, "degrade": to_dict(config)}
    path = lq_dir / CONFIG_NAME
    if path.exists() and not overwrite:
        if read_toml(path) != settings:
            raise InputError(f"{path}: {lq_dir} was made with another seed or config; pass --overwrite to "
                             "start it over, or choose another output folder")
        return
    atomic_write_text(path, dumps_toml(settings))


def degrade_folder(
    hq_dir: Path,
    lq_dir: Path,
    config: DegradeConfig,
    seed: int = 0,
    recursive: bool = False,
    overwrite: bool = False,
    progress: ProgressFn = no_progress,
) -> FolderResult:
    """Write ``lq_dir/<relative path>.png`` for every image of ``hq_dir``, and their records.

    With ``overwrite`` every image is made again and ``degradations.jsonl`` starts over.
    """
    import torch

    from fluxsr_cli.degrade.ops import to_uint8
    from fluxsr_cli.degrade.pipeline import degrade

    start, started = time.perf_counter(), time.time()
    hq_dir, lq_dir = Path(hq_dir), Path(lq_dir)
    if not 0 <= seed < 2**63:
        raise InputError(f"seed {seed} is out of range; use an integer in [0, 2^63)")
    if not hq_dir.is_dir():
        raise InputError(f"{hq_dir}: not a folder; give the folder of HQ images")
    if lq_dir.resolve() == hq_dir.resolve():
        raise InputError(f"{lq_dir}: the output folder is the input folder; choose another one")
    exclude = lq_dir.resolve() if recursive else None
    files = list_images(hq_dir.resolve(), recursive, exclude)
    if not files:
        hint = "" if recursive else " (pass --recursive to look in sub-folders)"
        raise InputError(f"{hq_dir}: no images ({', '.join(sorted(READ_SUFFIXES))}) found{hint}")
    rels = [f.relative_to(hq_dir.resolve()).as_posix() for f in files]
    outs = [Path(r).with_suffix(".png").as_posix() for r in rels]
    clashes = {o for o in outs if outs.count(o) > 1}
    if clashes:
        both = [r for r, o in zip(rels, outs, strict=True) if o in clashes][:2]
        raise InputError(f"{hq_dir}: {' and '.join(both)} would both be written as {sorted(clashes)[0]}; rename one")

    lq_dir.mkdir(parents=True, exist_ok=True)
    removed = len(sweep_temporaries(lq_dir, started=started))
    _check_settings(lq_dir, config, seed, overwrite)
    records_path = lq_dir / RECORDS_NAME
    if overwrite and records_path.exists():
        atomic_write_text(records_path, "")
    records = _read_records(records_path)

    written = skipped = 0
    failed: list[tuple[str, str]] = []
    unrecorded: list[str] = []
    progress("images", 0, len(files))
    for i, (path, rel, out) in enumerate(zip(files, rels, outs, strict=True)):
        target = lq_dir / out
        if target.exists() and not overwrite:
            skipped += 1
            if out not in records:
                unrecorded.append(out)
        else:
            try:
                rgb = read_image(path).rgb  # [H, W, 3] float32 in [0, 1]; alpha is not degraded
                hq = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W]
                image_s = image_seed(seed, rel)
                lq, params = degrade(hq, config, torch.Generator().manual_seed(image_s))
                lq_u8 = to_uint8(lq[0]).permute(1, 2, 0).numpy()  # [h, w, 3]
                _write_png(target, lq_u8, overwrite)
                record = {"file": rel, "lq": out, "seed": image_s, "hq_size": list(rgb.shape[:2]),
                          "lq_size": list(lq_u8.shape[:2]), **params[0]}
                _append_record(records_path, record)
                written += 1
            except InputError as e:
                failed.append((rel, str(e)))
        progress("images", i + 1, len(files))
    return FolderResult(lq_dir, len(files), written, skipped, failed, unrecorded, time.perf_counter() - start,
                        removed)
