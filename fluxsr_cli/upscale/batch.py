"""Upscaling files and folders: one image (`upscale_file`) and a resumable batch (`run_batch`).

A batch is planned first (`plan_batch`: which inputs, which outputs, what is already done, which
inputs collide), then the pending files are split across processes (``accelerate launch``), each
process writes its own outputs, and the per-file results are gathered into one `BatchReport`.
One bad file is reported with a one-line reason and never stops the batch.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fluxsr_cli.atomic import atomic_write_text, check_writable, sweep_temporaries, sweep_temporaries_of
from fluxsr_cli.errors import ConfigError, FluxSRError, InputError, one_line
from fluxsr_cli.images.reading import READ_SUFFIXES, image_size, read_image
from fluxsr_cli.images.writing import WRITE_FORMATS, write_image
from fluxsr_cli.processes import Processes, default_processes
from fluxsr_cli.progress import ProgressFn, no_progress

# fn(rgb [H, W, 3] float32 in [0, 1]) -> [sH, sW, 3] float32 in [0, 1]
UpscaleFn = Callable[[np.ndarray], np.ndarray]
Status = Literal["pending", "done", "skipped", "failed"]

DEFAULT_MAX_PIXELS = 256_000_000  # a 16 MP photo at x4; the tiler streams it (about 4 GB of RAM)


@dataclass(frozen=True)
class WriteOptions:
    """How one output file is checked and written."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse inputs whose OUTPUT would be larger
    quality: int = 95  # JPEG / WebP quality (WebP 100 = lossless)
    strip_metadata: bool = False
    keep_mode: bool = True  # grey and palette inputs written back as grey / palette
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.max_pixels <= 0:
            raise ConfigError(f"--max-pixels must be a positive number of megapixels, got {self.max_pixels / 1e6:g}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality must be 1-100, got {self.quality}")


@dataclass(frozen=True)
class BatchConfig:
    """``fluxsr batch``: which files to upscale and where the outputs go."""

    input_dir: Path
    output_dir: Path
    recursive: bool = False
    include: tuple[str, ...] = ()  # globs on the relative path or the name; empty = every image
    exclude: tuple[str, ...] = ()
    suffix: str = ""  # added to the output stem, e.g. "_x4"
    ext: str | None = None  # output format, e.g. "png"; None keeps the input's
    scale: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    quality: int = 95
    strip_metadata: bool = False
    keep_mode: bool = True
    overwrite: bool = False
    report: Path | None = None  # JSON report of every file's outcome and timing

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_dir", Path(self.input_dir))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.ext is not None:
            ext = "." + self.ext.lower().lstrip(".")
            if ext not in WRITE_FORMATS:
                known = ", ".join(sorted(s.lstrip(".") for s in WRITE_FORMATS))
                raise ConfigError(f"ext: cannot write {self.ext!r}; use one of {known}")
            object.__setattr__(self, "ext", ext)
        if any(c in self.suffix for c in "/\\") or self.suffix in (".", ".."):
            raise ConfigError(f"suffix: {self.suffix!r} must not contain path separators")
        if not 1 <= self.scale <= 8:
            raise ConfigError(f"scale: must be 1-8, got {self.scale}")
        self.output_options()  # validates quality and max_pixels

    def output_options(self) -> WriteOptions:
        return WriteOptions(max_pixels=self.max_pixels, quality=self.quality,
                             strip_metadata=self.strip_metadata, keep_mode=self.keep_mode,
                             overwrite=self.overwrite)


@dataclass
class FileResult:
    """The outcome of one input file."""

    src: str
    dst: str
    status: Status
    reason: str = ""  # one line for skipped / failed files
    seconds: float = 0.0  # read + upscale + write
    model_seconds: float = 0.0  # the upscaler alone
    in_size: tuple[int, int] | None = None  # (width, height)
    out_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    rank: int = 0  # the process that handled it
    rel: str = ""  # src relative to the batch's input folder

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["in_size"] = list(self.in_size) if self.in_size else None
        d["out_size"] = list(self.out_size) if self.out_size else None
        return d


@dataclass
class BatchReport:
    """Every file's outcome, in input order, merged over all processes."""

    files: list[FileResult]
    seconds: float = 0.0
    processes: int = 1
    removed: int = 0  # temporaries of earlier (killed) runs removed before this one started

    def count(self, status: Status) -> int:
        return sum(f.status == status for f in self.files)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                        "seconds": round(self.seconds, 3), "processes": self.processes,
                        "removed_temporaries": self.removed},
            "files": [f.to_dict() for f in self.files],
        }

    def save(self, path: Path, config: BatchConfig | None = None) -> None:
        """Write the report as JSON (atomically; an older report at ``path`` is replaced)."""
        data = self.to_dict()
        if config is not None:
            from fluxsr_cli.configs import to_dict

            data = {"config": to_dict(config), **data}
        atomic_write_text(Path(path), json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- one file


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Upscale an alpha plane [H, W] to ``size`` = (width, height) with Lanczos, clipped to [0, 1]."""
    import cv2

    out = cv2.resize(alpha.astype(np.float32), size, interpolation=cv2.INTER_LANCZOS4)
    return np.clip(out, 0.0, 1.0)


def check_job(src: str | Path, dst: str | Path, scale: int,
              options: WriteOptions) -> tuple[tuple[int, int], tuple[int, int]]:
    """Refuse a job before any model runs; return ((w, h), (out_w, out_h)).

    ``dst`` must be writable (and absent unless ``overwrite``), ``src`` a readable image whose
    output stays within ``max_pixels``. Raises :class:`InputError`.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise InputError(f"{dst}: is the input itself; choose another output name (even --overwrite would "
                         "lose the original)")
    check_writable(dst, options.overwrite)
    w, h = image_size(src)
    out_w, out_h = w * scale, h * scale
    if out_w * out_h > options.max_pixels:
        raise InputError(
            f"{src}: output would be {out_w}x{out_h} = {out_w * out_h / 1e6:.1f} MP, over --max-pixels "
            f"{options.max_pixels / 1e6:g}; raise --max-pixels or downscale the input"
        )
    return (w, h), (out_w, out_h)


def upscale_file(src: str | Path, dst: str | Path, fn: UpscaleFn, *, scale: int = 4,
                 options: WriteOptions | None = None) -> FileResult:
    """Read ``src``, upscale its RGB with ``fn`` (alpha separately), write ``dst`` atomically.

    Checked before the model runs: ``dst`` may be written (exists only with ``overwrite``) and the
    output size stays within ``max_pixels``. Raises :class:`InputError` on refusals.
    """
    src, dst = Path(src), Path(dst)
    options = options or WriteOptions()
    start = time.perf_counter()
    (w, h), (out_w, out_h) = check_job(src, dst, scale, options)
    image = read_image(src)
    t0 = time.perf_counter()
    out = np.asarray(fn(image.rgb))
    model_seconds = time.perf_counter() - t0
    if out.shape != (out_h, out_w, 3):
        raise FluxSRError(f"{src}: the upscaler returned {out.shape}, expected ({out_h}, {out_w}, 3); check --scale")
    if not all(np.isfinite(out[i:i + 256]).all() for i in range(0, out.shape[0], 256)):  # bands: no full-size mask
        raise FluxSRError(f"{src}: the upscaler produced NaN/inf values; try --dtype fp32")
    alpha = resize_alpha(image.alpha, (out_w, out_h)) if image.alpha is not None else None
    notes = list(image.notes)
    out = np.clip(out, 0.0, 1.0, out=out if out.flags.writeable and out.dtype == np.float32 else None)
    notes += write_image(dst, out, like=image, alpha=alpha, quality=options.quality,
                         strip_metadata=options.strip_metadata, overwrite=options.overwrite,
                         keep_mode=options.keep_mode)
    return FileResult(src=str(src), dst=str(dst), status="done", seconds=time.perf_counter() - start,
                      model_seconds=model_seconds, in_size=(w, h), out_size=(out_w, out_h), notes=notes)


# --------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One input and its planned output; ``status`` is "pending" unless planning decided already."""

    src: Path
    dst: Path
    rel: str  # input path relative to the input folder, POSIX style
    status: Status = "pending"
    reason: str = ""


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """Case-insensitive glob match on the relative path or on the file name."""
    rel_l, name_l = rel.lower(), rel.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(rel_l, p.lower()) or fnmatch.fnmatchcase(name_l, p.lower()) for p in patterns)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def find_inputs(config: BatchConfig) -> list[Path]:
    """Image files under ``input_dir`` (sorted, hidden files and the output folder left out)."""
    root = config.input_dir.resolve()
    out = config.output_dir.resolve()
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(here / d, out))
        if not config.recursive:
            dirs[:] = []
        for name in files:
            p = here / name
            if name.startswith(".") or p.suffix.lower() not in READ_SUFFIXES or not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            if config.include and not _matches(rel, config.include):
                continue
            if config.exclude and _matches(rel, config.exclude):
                continue
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def output_path(config: BatchConfig, src: Path) -> Path:
    """Where ``src``'s output goes: the same relative place, name + suffix, ``ext`` or the input's."""
    rel = src.resolve().relative_to(config.input_dir.resolve())
    ext = config.ext or (src.suffix if src.suffix.lower() in WRITE_FORMATS else ".png")
    return config.output_dir / rel.parent / f"{src.stem}{config.suffix}{ext}"


def plan_batch(config: BatchConfig) -> list[Job]:
    """Every input with its output; existing outputs are "skipped", colliding ones "failed".

    Raises :class:`InputError` when the input folder is missing or holds no matching image, or the
    output folder cannot be written. Looks at the file system only; runs no model.
    """
    src_dir = config.input_dir
    if not src_dir.exists():
        raise InputError(f"{src_dir}: input folder not found; check the path")
    if not src_dir.is_dir():
        raise InputError(f"{src_dir}: is a file; use `fluxsr upscale` for a single image")
    inputs = find_inputs(config)
    if not inputs:
        filters = f" matching --include {' '.join(config.include)}" if config.include else ""
        deeper = "" if config.recursive else " (add --recursive to look in subfolders)"
        raise InputError(f"{src_dir}: no images found{filters}{deeper}")
    check_writable(config.output_dir / ".fluxsr-probe", overwrite=True)  # creates the folder

    jobs = [Job(src=p, dst=output_path(config, p), rel=p.relative_to(src_dir.resolve()).as_posix())
            for p in inputs]
    # With -o inside the input folder and a suffix, last run's outputs are inputs now: leave them out.
    targets = {j.dst.resolve() for j in jobs}
    jobs = [j for j in jobs if j.src.resolve() not in targets or j.src.resolve() == j.dst.resolve()]
    by_output: dict[str, list[Job]] = {}
    for j in jobs:  # case-folded: a.PNG and a.png are one file on macOS and Windows
        by_output.setdefault(str(j.dst.resolve()).casefold(), []).append(j)
    for group in by_output.values():
        if len(group) > 1:
            names = ", ".join(j.rel for j in group)
            for j in group:
                j.status, j.reason = "failed", (
                    f"collision: {names} would all be written to {j.dst.name}; rename one or use --suffix/--ext"
                )
    for j in jobs:
        if j.status != "pending":
            continue
        if j.src.resolve() == j.dst.resolve():
            j.status, j.reason = "failed", "output would replace the input; use another -o, --suffix or --ext"
        elif j.dst.exists() and not config.overwrite:
            j.status, j.reason = "skipped", "output exists (use --overwrite to redo)"
    return jobs


# --------------------------------------------------------------------------- the batch


def run_batch(config: BatchConfig, fn: UpscaleFn | None, progress: ProgressFn = no_progress, *,
              jobs: list[Job] | None = None, processes: Processes | None = None) -> BatchReport:
    """Upscale every pending file of ``config`` with ``fn``; return the merged report.

    ``jobs`` is :func:`plan_batch`'s result when the caller planned already (to skip loading a model
    when nothing is pending; ``fn`` may then be None). First the main process removes what killed
    runs left in the output folder (:func:`fluxsr_cli.atomic.sweep_temporaries`). Pending files are
    split across ``processes``; every process returns the same merged report, and the first writes
    ``config.report``. A file that fails is recorded with its reason and the batch goes on.
    """
    start, started = time.perf_counter(), time.time()
    processes = processes or default_processes()
    jobs = plan_batch(config) if jobs is None else jobs
    pending = [j for j in jobs if j.status == "pending"]
    if pending and fn is None:
        raise ValueError("run_batch: fn is None but files are pending")
    removed = 0
    if processes.index == 0:
        removed = len(sweep_temporaries(config.output_dir, started=started))
        removed += len(sweep_temporaries_of(config.report, started=started)) if config.report is not None else 0
    processes.wait()  # every process has planned (and the old temporaries are gone) before any output appears
    mine = processes.split(pending)
    options = config.output_options()
    results: list[FileResult] = []
    progress("files", 0, len(mine))
    try:
        for i, job in enumerate(mine):
            results.append(_run_one(job, fn, config.scale, options, processes.index))
            results[-1].rel = job.rel
            progress("files", i + 1, len(mine))
    except KeyboardInterrupt:  # one process: the report says what was done before Ctrl-C, then stop
        if config.report is not None and processes.count == 1:
            _merge(jobs, [(results, time.perf_counter() - start, removed)], 1, interrupted=True).save(
                config.report, config)
        raise
    gathered = processes.gather((results, time.perf_counter() - start, removed))
    report = _merge(jobs, gathered, processes.count)
    if config.report is not None and processes.index == 0:
        report.save(config.report, config)
    return report


def _merge(jobs: list[Job], gathered: list, processes: int, interrupted: bool = False) -> BatchReport:
    """Every job's result in input order; a pending job nobody ran keeps its plan (or says it was interrupted)."""
    done = {r.src: r for part, _, _ in gathered for r in part}

    def planned(j: Job) -> FileResult:
        reason = "interrupted before this file (rerun to resume)" if interrupted and j.status == "pending" else j.reason
        return FileResult(src=str(j.src), dst=str(j.dst), status=j.status, reason=reason, rel=j.rel)

    files = [done.get(str(j.src)) or planned(j) for j in jobs]
    return BatchReport(files=files, seconds=max(s for _, s, _ in gathered), processes=processes,
                       removed=sum(n for _, _, n in gathered))


def _run_one(job: Job, fn: UpscaleFn, scale: int, options: WriteOptions, rank: int) -> FileResult:
    """One file of a batch: any error becomes a "failed" result (Ctrl-C still stops the batch)."""
    start = time.perf_counter()
    if job.dst.exists() and not options.overwrite:  # written by another run since planning
        return FileResult(src=str(job.src), dst=str(job.dst), status="skipped",
                          reason="output exists (use --overwrite to redo)", rank=rank)
    try:
        result = upscale_file(job.src, job.dst, fn, scale=scale, options=options)
    except FluxSRError as e:
        reason = one_line(e).removeprefix(f"{job.src}: ")
    except Exception as e:  # one bad file (or an out-of-memory) must not stop the batch: reported
        reason = f"{type(e).__name__}: {one_line(e)}"
    else:
        result.rank = rank
        return result
    return FileResult(src=str(job.src), dst=str(job.dst), status="failed", reason=reason,
                      seconds=time.perf_counter() - start, rank=rank)
