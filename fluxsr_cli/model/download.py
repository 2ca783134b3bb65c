"""Fetching ahead: what ``fluxsr upscale`` (or ``fluxsr pairs``) will download, checked, then downloaded.

A :class:`DownloadPlan` lists every file a command will read from the Hub (the checkpoint's files
and the base's ``model_index.json``, ``transformer/`` and ``vae/``; only ``vae/`` and
``model_index.json`` when the checkpoint ships its own ``transformer/``), each with its size and
whether the local Hugging Face cache already holds it, and the free space of the cache disk.
:func:`plan_upscale` builds it from the Hub's file listing (or, offline, from the cache alone);
:func:`check_plan` refuses a plan the disk cannot hold, one that needs files offline mode cannot
fetch, and a gated repo the token cannot read, before anything large moves; :func:`download`
fetches the files with ``hf_hub_download`` (resumable: a rerun continues the partial files),
smallest first, reporting bytes through the ``progress`` callback.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypeVar

from fluxsr_cli.errors import CheckpointError, ResourceError
from fluxsr_cli.model.checkpoint import CHECKPOINT_FILES
from fluxsr_cli.model.hub import (
    BASE_FILES,
    DEFAULT_BASE,
    FLUX_LICENCE_NOTE,
    VAE_FILES,
    WEIGHT_SUFFIXES,
    _offline_env,
    hub_error,
    is_local_ref,
    is_network_error,
)
from fluxsr_cli.progress import Notice, ProgressFn, no_notice, no_progress

MB = 10**6
T = TypeVar("T")


@dataclass(frozen=True)
class PlannedFile:
    """One file of a repo: its path in the repo, its size, and whether the cache holds it."""

    path: str  # e.g. "transformer/diffusion_pytorch_model-00001-of-00003.safetensors", or a pattern when missing
    size: int | None  # bytes; None: unknown (offline, and not in the cache)
    cached: bool


@dataclass(frozen=True)
class RepoPlan:
    """What one repo contributes: a Hub repo's files, or a local folder (nothing to fetch)."""

    role: str  # "checkpoint", "base" or "teacher"
    ref: str  # Hub repo id or local path
    revision: str | None = None  # as asked (None: the default branch)
    commit: str | None = None  # what the listing was read at
    files: tuple[PlannedFile, ...] = ()
    local: bool = False

    @property
    def to_fetch(self) -> tuple[PlannedFile, ...]:
        return () if self.local else tuple(f for f in self.files if not f.cached)


@dataclass(frozen=True)
class DownloadPlan:
    repos: tuple[RepoPlan, ...]
    cache_dir: Path
    free_bytes: int  # on the disk of cache_dir
    offline: bool

    def _sizes(self, cached: bool | None) -> int:
        return sum(f.size or 0 for r in self.repos if not r.local for f in r.files
                   if cached is None or f.cached == cached)

    @property
    def total_bytes(self) -> int:
        return self._sizes(None)

    @property
    def cached_bytes(self) -> int:
        return self._sizes(True)

    @property
    def download_bytes(self) -> int:
        return self._sizes(False)

    @property
    def unknown(self) -> list[tuple[str, str]]:
        """(repo, path) of files to fetch whose size is unknown (offline, missing from the cache)."""
        return [(r.ref, f.path) for r in self.repos for f in r.to_fetch if f.size is None]


class Entry(NamedTuple):
    """A file of a repo listing: path, size in bytes and blob id (the name its blob has in the cache)."""

    path: str
    size: int | None
    blob: str | None = None


# ---------------------------------------------------------------- pure parts


def base_patterns(checkpoint_ships_transformer: bool) -> list[str]:
    """What the base contributes: everything of :data:`BASE_FILES`, or no ``transformer/`` when the
    checkpoint brings its own (``fluxsr upscale`` then never reads the base's)."""
    if checkpoint_ships_transformer:
        return [p for p in BASE_FILES if not p.startswith("transformer/")]
    return list(BASE_FILES)


def ships_transformer(paths: Iterable[str]) -> bool:
    """A fluxsr checkpoint with a full ``transformer/`` and no ``lora.safetensors`` (as read_checkpoint decides)."""
    paths = set(paths)
    return "lora.safetensors" not in paths and any(p.startswith("transformer/") for p in paths)


def select(entries: Iterable[Entry], patterns: Sequence[str]) -> list[Entry]:
    """The entries that match any of ``patterns`` (glob, ``*`` crossing ``/``, as ``allow_patterns``)."""
    return [e for e in entries if any(fnmatch(e.path, p) for p in patterns)]


def missing_files(entries: Sequence[Entry], required: Sequence[str], indexes: dict[str, dict]) -> list[str]:
    """What a cached listing lacks: a ``required`` pattern that matches nothing, every shard a weight
    index (``indexes``: path -> parsed ``*.index.json``) names that is not among ``entries``, and the
    weights of a ``sub/*`` model folder that holds its ``config.json`` and no index (the rule of
    :func:`~fluxsr_cli.model.hub.incomplete`, on a listing)."""
    paths = {e.path for e in entries}
    missing = [p for p in required if not any(fnmatch(path, p) for path in paths)]
    for pattern in required:
        sub = pattern[:-2]
        if (pattern.endswith("/*") and f"{sub}/config.json" in paths
                and not any(p.startswith(f"{sub}/") and p.endswith(WEIGHT_SUFFIXES) for p in paths)):
            missing.append(f"{sub}/ weights")
    for index_path, index in indexes.items():
        folder = PurePosixPath(index_path).parent
        for shard in sorted(set(index.get("weight_map", {}).values())):
            path = str(folder / shard)
            if path not in paths and path not in missing:
                missing.append(path)
    return missing


def format_bytes(n: int | None) -> str:
    """``23.8 GB``, ``335 MB``, ``1.2 kB`` (decimal units, as the Hub shows sizes); ``?`` when unknown."""
    if n is None:
        return "?"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def space_error(plan: DownloadPlan) -> ResourceError | None:
    """The refusal when the files to fetch do not fit the free space of the cache disk, else None."""
    need = plan.download_bytes
    if need <= plan.free_bytes:
        return None
    return ResourceError(
        f"{plan.cache_dir}: the download needs {format_bytes(need)} but the disk has {format_bytes(plan.free_bytes)} "
        "free; free some space, or point HF_HOME (or HF_HUB_CACHE) at a larger disk"
    )


# ---------------------------------------------------------------- the cache and the Hub


def cache_dir() -> Path:
    import huggingface_hub.constants as constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _scan(cache: Path) -> Any:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(cache)
    except CacheNotFound:
        return None


def _cached_repo(scan: Any, repo: str) -> Any:
    return next((r for r in scan.repos if r.repo_id == repo and r.repo_type == "model"), None) if scan else None


def cached_listing(scan: Any, repo: str, revision: str | None) -> tuple[str | None, list[Entry], Path | None]:
    """(commit, files, snapshot folder) of ``repo`` at ``revision`` (a branch, tag or commit) in the cache."""
    cached = _cached_repo(scan, repo)
    for rev in cached.revisions if cached else ():
        if rev.commit_hash == revision or (revision or "main") in rev.refs:
            snapshot = Path(rev.snapshot_path)
            entries = [Entry(PurePosixPath(Path(f.file_path).relative_to(snapshot)).as_posix(), f.size_on_disk,
                             Path(f.blob_path).name) for f in rev.files]
            return rev.commit_hash, sorted(entries), snapshot
    return None, [], None


def hub_call(repo: str, revision: str | None, call: Callable[[], T]) -> T:
    """``call()``, a huggingface_hub call about ``repo``, with its failures as one line."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return call()
    except Exception as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise ResourceError(f"{cache_dir()}: the disk is full; free some space and rerun (partial files "
                                "resume)") from None
        if is_network_error(e) or isinstance(e, LocalEntryNotFoundError):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{repo}: cannot reach the Hugging Face Hub ({first}); check the network, "
                                  "or pass --offline to use what the local cache holds") from None
        if isinstance(e, OSError):  # the Hub's HTTP errors and offline mode are OSErrors too
            raise hub_error(repo, e, revision) from None
        raise


def hub_listing(repo: str, revision: str | None) -> tuple[str | None, list[Entry]]:
    """(commit, files with sizes and blob ids) of ``repo`` at ``revision`` from the Hub's API."""
    from huggingface_hub import HfApi

    info = hub_call(repo, revision, lambda: HfApi().model_info(repo, revision=revision, files_metadata=True))
    entries = []
    for s in info.siblings or ():
        lfs = getattr(s, "lfs", None)
        entries.append(Entry(s.rfilename, s.size, lfs.sha256 if lfs is not None else s.blob_id))
    return info.sha, sorted(entries)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); delete it and download again") from None


def _hub_json(repo: str, filename: str, commit: str | None, snapshot: Path | None) -> dict:
    """A small JSON file of a Hub repo: from the cache's snapshot when there, else fetched into a temporary
    folder (so planning writes nothing into the cache)."""
    if snapshot is not None and (snapshot / filename).is_file():
        return _read_json(snapshot / filename)
    from huggingface_hub import hf_hub_download

    with tempfile.TemporaryDirectory() as tmp:
        return _read_json(Path(hub_call(repo, commit, lambda: hf_hub_download(repo, filename, revision=commit, local_dir=tmp))))


# ---------------------------------------------------------------- plans


def plan_repo(role: str, ref: str, revision: str | None, patterns: Sequence[str], *, offline: bool, scan: Any,
              required: Sequence[str] = ()) -> tuple[RepoPlan, Path | None]:
    """One repo's part of a plan, and its snapshot folder in the cache (None when not cached).

    Online the listing is the Hub's (sizes of every file; ``cached`` when the cache holds its blob);
    offline it is what the cache holds, plus what it visibly lacks (``required`` patterns that match
    nothing, shards that a weight index names), with unknown sizes.
    """
    if is_local_ref(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise CheckpointError(f"{path}: no such folder or file; pass a local path that exists or a Hub repo id")
        found = [Entry(p.relative_to(path).as_posix(), p.stat().st_size)
                 for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else []
        files = tuple(PlannedFile(e.path, e.size, True) for e in select(found, patterns))
        return RepoPlan(role, str(path), revision, None, files, local=True), None
    commit, cached, snapshot = cached_listing(scan, ref, revision)
    if offline:
        if commit is None:
            raise CheckpointError(f"{ref}: not in the local Hugging Face cache and offline mode is on; "
                                  "run without --offline to download it, or pass a local folder")
        chosen = select(cached, patterns)
        indexes = {e.path: _read_json(snapshot / e.path) for e in chosen if e.path.endswith(".index.json")}
        files = [PlannedFile(e.path, e.size, True) for e in chosen]
        files += [PlannedFile(p, None, False) for p in missing_files(chosen, required, indexes)]
        return RepoPlan(role, ref, revision, commit, tuple(files)), snapshot
    commit_hub, listing = hub_listing(ref, revision)
    chosen = select(listing, patterns)
    absent = [p for p in required if not any(fnmatch(e.path, p) for e in chosen)]
    if absent:
        raise CheckpointError(f"{ref}: has no {', '.join(absent)}; it is not a FLUX base in diffusers layout "
                              "(check --base)")
    repo = _cached_repo(scan, ref)
    blobs = {Path(f.blob_path).name for rev in repo.revisions for f in rev.files} if repo else set()
    files = tuple(PlannedFile(e.path, e.size, e.blob is not None and e.blob in blobs) for e in chosen)
    return RepoPlan(role, ref, revision, commit_hub, files), snapshot if commit == commit_hub else None


def plan_upscale(model: str, revision: str | None = None, base: str | None = None,
                 base_revision: str | None = None, offline: bool = False,
                 free_bytes: int | None = None, vae: str | None = None) -> DownloadPlan:
    """What ``fluxsr upscale --model M [--base B] [--vae V]`` reads: the checkpoint's files and the base's.

    The base is ``base``, else the one the checkpoint's ``fluxsr.json`` names (FLUX.1-dev for the
    community layout), with the same revision rules as ``load_upscaler``. A single transformer file
    as ``base`` brings no VAE: then the VAE comes from ``vae``, else from the checkpoint's base repo.
    ``free_bytes`` overrides the measured free space of the cache disk.
    """
    offline = offline or _offline_env()
    cache = cache_dir()
    scan = _scan(cache)
    ckpt, snapshot = plan_repo("checkpoint", model, revision, CHECKPOINT_FILES, offline=offline, scan=scan)
    paths = [f.path for f in ckpt.files]
    if not paths:
        raise CheckpointError(f"{model}: holds none of the checkpoint files ({', '.join(CHECKPOINT_FILES[:3])}, "
                              "pytorch_lora_weights.safetensors, ...); check --model")
    named, named_revision = DEFAULT_BASE, None  # the base the checkpoint names
    if "fluxsr.json" in paths:
        settings = (_read_json(Path(ckpt.ref) / "fluxsr.json") if ckpt.local
                    else _hub_json(model, "fluxsr.json", ckpt.commit, snapshot))
        named, named_revision = str(settings.get("base_model") or DEFAULT_BASE), settings.get("base_revision")
    if base is None:
        base, base_revision = named, base_revision or named_revision
    patterns = base_patterns(ships_transformer(paths))
    plans = [ckpt]
    from fluxsr_cli.model.single_file import is_weights_file

    if is_weights_file(base):  # a transformer file: nothing to fetch for it, but the VAE comes from elsewhere
        plans.append(plan_repo("base", base, None, [], offline=offline, scan=scan)[0])
        if vae is None:
            vae_files = [p for p in patterns if not p.startswith("transformer/")]
            plans.append(plan_repo("vae", named, named_revision, vae_files, offline=offline, scan=scan,
                                   required=vae_files)[0])
    else:
        plans.append(plan_repo("base", base, base_revision, patterns, offline=offline, scan=scan,
                               required=patterns)[0])
    if vae is not None:  # a local file or folder as it is; of a Hub repo only what load_vae_for reads
        local = Path(vae).expanduser().exists()
        plans.append(plan_repo("vae", vae, None, ["*"] if local else VAE_FILES, offline=offline, scan=scan,
                               required=None if local else ["vae/*"])[0])
    return DownloadPlan(tuple(plans), cache, free_space(cache) if free_bytes is None else free_bytes, offline)


def plan_files(role: str, ref: str, revision: str | None, patterns: Sequence[str], offline: bool = False,
               free_bytes: int | None = None) -> DownloadPlan:
    """A plan for one repo and a list of patterns (e.g. the teacher's files for ``fluxsr pairs``)."""
    offline = offline or _offline_env()
    cache = cache_dir()
    plan, _ = plan_repo(role, ref, revision, patterns, offline=offline, scan=_scan(cache), required=patterns)
    return DownloadPlan((plan,), cache, free_space(cache) if free_bytes is None else free_bytes, offline)


# ---------------------------------------------------------------- checking and downloading


def check_plan(plan: DownloadPlan) -> None:
    """Refuse, in one line, a plan that cannot complete: files offline mode cannot fetch, a disk too
    small, or (online) a repo whose files the token may not read (gated: 401/403)."""
    if plan.offline and any(r.to_fetch for r in plan.repos):
        missing = [f"{r.ref}/{f.path}" for r in plan.repos for f in r.to_fetch]
        raise CheckpointError(f"offline mode is on and {len(missing)} files are not in the cache (e.g. {missing[0]}); "
                              "run without --offline (and unset HF_HUB_OFFLINE) to fetch them")
    error = space_error(plan)
    if error is not None:
        raise error
    if plan.offline:
        return
    from huggingface_hub import HfApi

    for repo in plan.repos:
        if repo.to_fetch:
            hub_call(repo.ref, repo.revision, partial(HfApi().auth_check, repo.ref))


def download(plan: DownloadPlan, progress: ProgressFn = no_progress, notice: Notice = no_notice) -> int:
    """Check ``plan`` (:func:`check_plan`), then fetch its missing files into the cache, smallest first.

    ``progress("download MB", done, total)`` counts megabytes. An interrupted download resumes from its
    partial files on the next call. Returns the number of files fetched.
    """
    check_plan(plan)
    todo = sorted(((r, f) for r in plan.repos for f in r.to_fetch), key=lambda rf: (rf[1].size or 0, rf[1].path))
    if not todo:
        return 0
    if any(r.ref == DEFAULT_BASE for r, _ in todo):
        notice(FLUX_LICENCE_NOTE)
    from huggingface_hub import hf_hub_download

    need = plan.download_bytes or 1
    total_mb = -(-need // MB)  # rounded up: a last partial megabyte still counts; done reaches it at the end
    bar = byte_counter(lambda done: progress("download MB", min(done, need) * total_mb // need, total_mb))
    for repo, file in todo:
        notice(f"downloading {repo.ref}/{file.path} ({format_bytes(file.size)})")
        hub_call(repo.ref, repo.revision,
                 partial(hf_hub_download, repo.ref, file.path, revision=repo.revision, tqdm_class=bar))
        bar.finish(file.size or 0)
    return len(todo)


def byte_counter(report) -> Any:
    """A ``tqdm_class`` for huggingface_hub that draws nothing and sends the bytes written so far, over
    every file, to ``report(done)``. ``finish(size)`` closes a file (counting a file whose bytes the
    library did not report, e.g. one linked from a blob already in the cache)."""
    from huggingface_hub.utils import tqdm

    state = {"done": 0, "file": 0}
    lock = threading.Lock()

    class ByteCounter(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.update(kwargs.get("initial") or 0)  # the part of a resumed file already on disk

        def update(self, n: float | None = 1) -> bool | None:
            with lock:
                state["file"] += int(n or 0)
                done = state["done"] + state["file"]
            report(done)
            return None

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes (xet reports them beside the bytes written): not counted twice."""

        def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            """Xet's transfer rate: nothing to draw."""

        @staticmethod
        def finish(size: int) -> None:
            with lock:
                state["done"] += size
                state["file"] = 0
                done = state["done"]
            report(done)

    return ByteCounter
