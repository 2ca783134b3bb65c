"""The learned metrics' weight files: where they come from, where they are kept, and offline use.

Every file is published at a public URL and fetched once into a weights folder: ``FLUXSR_WEIGHTS_DIR``
when set (``fluxsr eval --weights-dir`` sets it for one run), else torch hub's ``checkpoints`` folder,
where torchvision keeps the same backbone files. Offline (``FLUXSR_OFFLINE=1`` or
``HF_HUB_OFFLINE=1``) nothing is downloaded. Whatever cannot be had is reported in one error that
names every missing file and the URL to fetch it from, so one look at the message is enough.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fluxsr_cli.errors import CheckpointError

WEIGHTS_DIR_ENV = "FLUXSR_WEIGHTS_DIR"
# the second way out an error offers: another folder (a caller with its own setting names that instead)
ELSEWHERE = f"point {WEIGHTS_DIR_ENV} (fluxsr eval --weights-dir) at a folder that holds them"


@dataclass(frozen=True)
class WeightFile:
    """One published state dict: its name in the weights folder and the URL it is downloaded from."""

    name: str
    url: str
    check_hash: bool = False  # torchvision's files end in the first digits of their sha256


def default_weights_dir() -> Path:
    """``$FLUXSR_WEIGHTS_DIR``, else torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    chosen = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("FLUXSR_OFFLINE", "HF_HUB_OFFLINE"))


def missing_files(files: Sequence[WeightFile], folder: Path) -> list[WeightFile]:
    """The files of ``files`` that ``folder`` does not hold yet."""
    return [f for f in files if not (folder / f.name).is_file()]


def fetch_weight_files(
    files: Sequence[WeightFile], folder: str | Path | None = None, what: str = "metric weights",
    elsewhere: str = ELSEWHERE,
) -> tuple[dict[str, dict[str, torch.Tensor]], CheckpointError | None]:
    """name -> state dict for each of ``files`` that can be had (duplicates once), downloading what
    ``folder`` lacks, and one :class:`CheckpointError` naming every other file with its URL (None when
    all were had): a caller with several models can still use those whose files are all there."""
    folder = Path(folder) if folder is not None else default_weights_dir()
    unique = list({f.name: f for f in files}.values())
    problems: list[str] = []
    if offline():
        missing = missing_files(unique, folder)
        if missing:
            problems.append(_offline_problem(missing, folder, elsewhere))
        unique = [f for f in unique if f not in missing]
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    failed: list[tuple[WeightFile, str]] = []
    for f in unique:
        try:
            loaded[f.name] = torch.hub.load_state_dict_from_url(
                f.url, model_dir=str(folder), map_location="cpu", file_name=f.name, check_hash=f.check_hash,
                progress=False, weights_only=True,
            )
        except Exception as e:  # URLError, HTTPError, hash mismatch, unreadable file: one line for the user
            failed.append((f, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if failed:
        reasons = "; ".join(f"{f.name}: {reason}" for f, reason in failed)
        problems.append(f"cannot load or download {len(failed)} file(s) ({reasons}); "
                        f"{_fetch_advice([f for f, _ in failed], folder, elsewhere)}")
    return loaded, CheckpointError(f"{what}: {'; '.join(problems)}") if problems else None


def load_weight_files(
    files: Sequence[WeightFile], folder: str | Path | None = None, what: str = "metric weights",
    elsewhere: str = ELSEWHERE,
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> state dict for each of ``files`` (duplicates once), downloading what ``folder`` lacks.

    Raises one :class:`CheckpointError` naming every file that could not be had, with its URL (offline,
    before reading any: the missing files are the whole story).
    """
    if offline():
        missing = missing_files(files, Path(folder) if folder is not None else default_weights_dir())
        if missing:
            raise CheckpointError(f"{what}: {_offline_problem(list({f.name: f for f in missing}.values()), folder, elsewhere)}")
    loaded, error = fetch_weight_files(files, folder, what, elsewhere)
    if error is not None:
        raise error
    return loaded


def _offline_problem(missing: Sequence[WeightFile], folder: str | Path | None, elsewhere: str) -> str:
    folder = Path(folder) if folder is not None else default_weights_dir()
    return f"{len(missing)} file(s) not in {folder} and offline; {_fetch_advice(missing, folder, elsewhere)}"


def _fetch_advice(files: Sequence[WeightFile], folder: Path, elsewhere: str) -> str:
    fetch = ", ".join(f"{f.url} as {f.name}" for f in files)
    return f"download {fetch} into {folder}, or {elsewhere}"
