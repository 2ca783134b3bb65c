"""Where models come from: a local folder, or a Hugging Face Hub repo resolved through the local cache.

:func:`resolve` turns a reference (a folder, or a repo id with a revision) into a local folder,
downloading only the files a command needs (``allow_patterns``), and turns every Hub failure
(offline, gated, missing repo or revision) into one :class:`CheckpointError` line that says what to do
(:func:`hub_error`). :func:`upload_folder` publishes a checkpoint folder as one commit.
"""

from __future__ import annotations

import os
from pathlib import Path

from fluxsr_cli.errors import CheckpointError
from fluxsr_cli.progress import Notice, no_notice

DEFAULT_BASE = "black-forest-labs/FLUX.1-dev"
FLUX_LICENCE_NOTE = (
    "FLUX.1-dev is a gated model under the FLUX.1 [dev] Non-Commercial License: you must accept it at "
    "https://huggingface.co/black-forest-labs/FLUX.1-dev, use is non-commercial, and the licence also "
    "restricts training other models on its outputs."
)
# what upscaling and training read of a FLUX base: never the text encoders, never the single-file duplicate
BASE_FILES = ["model_index.json", "transformer/*", "vae/*"]
VAE_FILES = ["model_index.json", "vae/*"]  # what the VAE alone needs of a base
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")  # a model folder with none of these lacks its weights


def is_local_ref(ref: str | Path) -> bool:
    """A path that exists, or that is clearly meant as one (starts with / . ~ or holds a backslash)."""
    text = str(ref)
    return Path(text).expanduser().exists() or text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1


def incomplete(folder: Path, patterns: list[str] | None) -> str | None:
    """The first file or folder that ``patterns`` ask for and ``folder`` lacks (None: complete).

    ``sub/*`` needs ``sub/``; when it holds a model (a ``config.json``), also its weights: every shard
    its index names, or at least one weights file. Other patterns need the file they name.
    """
    import json

    for pattern in patterns or []:
        if pattern.endswith("/*"):
            sub = folder / pattern[:-2]
            if not sub.is_dir() or not any(sub.iterdir()):
                return pattern[:-2] + "/"
            if not (sub / "config.json").is_file():
                continue  # tokenizers, schedulers: no weights
            index = next(iter(sub.glob("*.index.json")), None)
            if index is not None:
                shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
                lacking = sorted(s for s in shards if not (sub / s).is_file())
                if lacking:
                    return f"{pattern[:-2]}/{lacking[0]}"
            elif not any(p.suffix in WEIGHT_SUFFIXES for p in sub.iterdir()):
                return f"{pattern[:-2]}/ weights"
        elif not any(c in pattern for c in "*?[") and not (folder / pattern).is_file():
            return pattern
    return None


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve(ref: str | Path, revision: str | None = None, offline: bool = False,
            allow_patterns: list[str] | None = None, notice: Notice = no_notice,
            first_download_note: str | None = None, complete: bool = False) -> Path:
    """Return a local folder for ``ref`` (a folder, or a Hub repo downloaded to the HF cache).

    ``first_download_note`` is passed to ``notice`` when the repo is not in the cache yet (the
    FLUX.1-dev licence note). With ``complete``, every pattern of ``allow_patterns`` must be present
    for a cache hit (:func:`incomplete`), else the rest is downloaded. All Hub failures become
    one-line :class:`CheckpointError` messages.
    """
    if is_local_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such folder; give a local checkpoint folder or a Hub repo id")
        return path

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = str(ref)
    offline = offline or _offline_env()
    missing = "not in the local Hugging Face cache"
    try:
        found = Path(snapshot_download(repo, revision=revision, allow_patterns=allow_patterns, local_files_only=True))
        # a cache hit is the snapshot folder, whatever it holds: an earlier run may have fetched config.json alone
        absent = incomplete(found, allow_patterns) if complete else None
        if not absent:
            return found
        missing = f"only partly in the local Hugging Face cache ({absent} missing)"
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if offline:
        raise CheckpointError(f"{repo}: {missing} and offline mode is on; run once online to download it, "
                              "or pass a local folder")
    if first_download_note:
        notice(first_download_note)
    notice(f"downloading {repo}" + (f"@{revision}" if revision else "") + " from the Hugging Face Hub")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=allow_patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:
        raise hub_error(repo, e, revision) from None


def is_network_error(error: BaseException) -> bool:
    """An error of the HTTP stack under huggingface_hub (httpx or its fork: no connection, a timeout, ...)."""
    return type(error).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")


def hub_error(repo: str, error: BaseException, revision: str | None = None) -> CheckpointError:
    """The one-line :class:`CheckpointError` for a failed read of ``repo`` (gated, missing, offline, ...).

    ``error`` is what a huggingface_hub call raised; anything else is reported as a failed download.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return CheckpointError(_gated_message(repo, error))
    if isinstance(error, RevisionNotFoundError):
        return CheckpointError(f"{repo}: revision {revision!r} does not exist; check --revision")
    if isinstance(error, RepositoryNotFoundError):
        return CheckpointError(
            f"{repo}: no such repository on the Hugging Face Hub (or it is private); check the name, "
            "or log in with `hf auth login` if it is private"
        )
    if isinstance(error, OfflineModeIsEnabled):
        return CheckpointError(f"{repo}: offline mode is on (HF_HUB_OFFLINE) and this needs the Hub; "
                               "unset HF_HUB_OFFLINE, or use what the local cache holds")
    if isinstance(error, LocalEntryNotFoundError) or is_network_error(error):
        return CheckpointError(
            f"{repo}: cannot reach the Hugging Face Hub and nothing is cached; check the network, "
            "or pass a local folder"
        )
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return CheckpointError(_gated_message(repo, error))
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return CheckpointError(f"{repo}: download failed ({first}); retry later")


def _gated_message(repo: str, error: Exception) -> str:
    from huggingface_hub import get_token

    status = getattr(getattr(error, "response", None), "status_code", None)
    if get_token() is None or status == 401:
        return (f"{repo}: gated model and you are not logged in; accept its licence at "
                f"https://huggingface.co/{repo}, then run `hf auth login` or set HF_TOKEN")
    return (f"{repo}: your Hugging Face account has no access yet; accept the licence at "
            f"https://huggingface.co/{repo} and retry")


def upload_folder(folder: Path, repo_id: str, private: bool = False, message: str = "Upload fluxsr checkpoint") -> str:
    """Create the model repo ``repo_id`` if needed and upload ``folder`` to it; return the commit's URL.

    ``upload_folder`` makes one commit: when it fails, the repo holds nothing of this upload. Every
    failure (offline, no network, not logged in, no write access) is one :class:`CheckpointError` line.
    ``private`` applies to a repo this call creates; an existing repo keeps its visibility.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    except Exception as e:
        error = _upload_error(repo_id, e)
        if error is None:
            raise
        raise CheckpointError(f"{error}; nothing was committed to {repo_id} (the upload is one commit) and the "
                              f"checkpoint stays in {folder}") from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def _upload_error(repo_id: str, error: BaseException) -> str | None:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
    )

    if isinstance(error, HFValidationError):
        return f"{repo_id}: not a valid repo id ({str(error).splitlines()[0]}); give NAMESPACE/NAME"
    if isinstance(error, OfflineModeIsEnabled):
        return f"{repo_id}: cannot upload, offline mode is on (HF_HUB_OFFLINE); unset it and rerun"
    if is_network_error(error):
        return f"{repo_id}: cannot reach the Hugging Face Hub ({str(error).splitlines()[0]}); check the network"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, LocalTokenNotFoundError) or status == 401:
        return (f"{repo_id}: not logged in to the Hugging Face Hub (or the token is invalid); run `hf auth login` "
                "with a token that can write, or set HF_TOKEN")
    if status == 403:
        return (f"{repo_id}: your token may not write there (a read-only token, or a namespace that is not yours); "
                "use a write token, or a repo under your own name")
    if isinstance(error, HfHubHTTPError):
        return f"{repo_id}: upload failed ({(str(error).strip().splitlines() or ['HTTP error'])[0]}); retry later"
    return None
