"""The pairs data set (format v1), written by ``fluxsr pairs`` and read by ``fluxsr distill``.

::

    DATA/
      pairs.toml               the [pairs] config used and the [degrade] config, for the record
      embeddings.safetensors   student conditioning: prompt_embeds [1, L, D_text], pooled_prompt_embeds [1, D_pooled]
      manifest.jsonl           one JSON object per finished item, sorted by index
      items/000000.safetensors eps, z_0, z_l: float32 [16, H/8, W/8] normalised latents, no batch dim
      hq/000000.png            x_0 = D(z_0), 8-bit RGB, H x W
      lq/000000.png            x_L = degrade(x_0), 8-bit RGB, H/scale x W/scale
      parts/manifest-RRRRR.jsonl  each process's finished items (the manifest is merged from them)

Manifest keys: index, seed, prompt, latents, hq, lq (paths relative to DATA), height, width, scale,
teacher {model, revision, steps, guidance, dtype}, degradation {every drawn parameter}.

An item is finished once its files exist and its line is in a manifest part (:func:`finished_items`);
:func:`merge_manifest` writes ``manifest.jsonl`` from the parts, which :func:`read_manifest` and
:class:`PairDataset` read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fluxsr_cli.atomic import atomic_write_text
from fluxsr_cli.errors import InputError

LATENT_KEYS = ("eps", "z_0", "z_l")
EMBEDDING_KEYS = ("prompt_embeds", "pooled_prompt_embeds")


def read_manifest(root: str | Path) -> list[dict[str, Any]]:
    """The manifest's records, in file order (sorted by index)."""
    path = Path(root) / "manifest.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: missing; {root} is not a finished pairs data set (run `fluxsr pairs`)") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {number} is not JSON ({e}); rerun `fluxsr pairs` to rewrite it") from None
        if not isinstance(record, dict) or not isinstance(record.get("index"), int):
            raise InputError(f"{path}: line {number} has no integer index; rerun `fluxsr pairs` to rewrite it")
        records.append(record)
    return records


def _load_tensors(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; rerun `fluxsr pairs` on the data set to restore it") from None
    except Exception as e:  # safetensors raises its own types for damaged files
        raise InputError(f"{path}: not a valid safetensors file ({str(e).splitlines()[0]}); delete it and rerun "
                         "`fluxsr pairs` to make it again") from None
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise InputError(f"{path}: lacks {', '.join(missing)}; delete it and rerun `fluxsr pairs`")
    return tensors


def load_embeddings(root: str | Path) -> dict[str, torch.Tensor]:
    """The student's fixed conditioning: ``prompt_embeds`` [1, L, D], ``pooled_prompt_embeds`` [1, P] (fp32)."""
    return _load_tensors(Path(root) / "embeddings.safetensors", EMBEDDING_KEYS)


def load_image(path: Path) -> torch.Tensor:
    """An 8-bit RGB PNG -> float32 [3, H, W] in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path}: missing; rerun `fluxsr pairs` on the data set to restore it") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the image ({e}); delete it and rerun `fluxsr pairs`") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0


class PairDataset(torch.utils.data.Dataset):
    """Items ``{"index", "eps", "z_0", "z_l": float32 [16, h, w], "hq": float32 [3, H, W] in [0, 1]}``.

    With ``lq=True`` items also hold ``"lq"``: float32 [3, H/scale, W/scale] in [0, 1].
    """

    def __init__(self, root: str | Path, lq: bool = False) -> None:
        self.root = Path(root)
        self.records = read_manifest(self.root)
        self.lq = lq

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, k: int) -> dict[str, Any]:
        record = self.records[k]
        tensors = _load_tensors(self.root / record["latents"], LATENT_KEYS)
        item: dict[str, Any] = {"index": record["index"], **{key: tensors[key] for key in LATENT_KEYS}}
        item["hq"] = load_image(self.root / record["hq"])
        if self.lq:
            item["lq"] = load_image(self.root / record["lq"])
        return item


def item_names(index: int) -> dict[str, str]:
    """Relative paths of item ``index``'s files."""
    stem = f"{index:06d}"
    return {"latents": f"items/{stem}.safetensors", "hq": f"hq/{stem}.png", "lq": f"lq/{stem}.png"}


def read_lines(path: Path) -> tuple[list[str], bool]:
    """Complete JSON lines of a manifest part; the flag says a torn last line was dropped."""
    if not path.is_file():
        return [], False
    raw = path.read_text(encoding="utf-8", errors="replace")
    lines, torn = raw.split("\n"), False
    if lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()
        torn = True
    good = []
    for line in lines:
        try:
            if isinstance(json.loads(line).get("index"), int):
                good.append(line)
        except (json.JSONDecodeError, AttributeError):
            torn = True
    return good, torn


def finished_items(root: Path) -> dict[int, str]:
    """Index -> manifest line of every finished item (line recorded and files present)."""
    lines: dict[int, str] = {}
    sources = [root / "manifest.jsonl", *sorted((root / "parts").glob("manifest-*.jsonl"))]
    for source in sources:
        for line in read_lines(source)[0]:
            lines[json.loads(line)["index"]] = line
    return {i: line for i, line in sorted(lines.items())
            if all((root / rel).is_file() for rel in item_names(i).values())}


def append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def merge_manifest(root: Path) -> int:
    """Write ``manifest.jsonl`` (every finished item, sorted by index) atomically; returns its length."""
    lines = finished_items(root)
    atomic_write_text(root / "manifest.jsonl", "".join(line + "\n" for line in lines.values()))
    return len(lines)
