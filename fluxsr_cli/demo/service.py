"""What the demo does, without the web page: one loaded model serving upscales one at a time.

A :class:`DemoService` holds the :class:`~fluxsr_cli.upscale.restore.Upscaler` loaded at start-up,
the tile that ``--tile auto`` stood for then (resolved once, so a result never depends on how busy
the GPU was), the write settings (``--max-pixels``) and a lock: ``torch.compiler.set_stance`` and
the tiled VAE's GroupNorm patches are process-global, so two upscales must never overlap. Each job
goes file in -> file out through :func:`~fluxsr_cli.upscale.batch.upscale_file` (which refuses
through :func:`~fluxsr_cli.upscale.batch.check_job` before any model runs), the code behind
``fluxsr upscale``: alpha, 16-bit, EXIF, ICC and the ``--max-pixels`` refusal behave the same, and
the PNG it writes is the one ``fluxsr upscale IN -o OUT.png`` writes, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fluxsr_cli.errors import ConfigError, FluxSRError
from fluxsr_cli.images.writing import write_image
from fluxsr_cli.progress import Notice, ProgressFn, no_notice, no_progress
from fluxsr_cli.upscale.batch import WriteOptions, upscale_file
from fluxsr_cli.upscale.comparison import bicubic_rgb
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.restore import Upscaler

SCALES = (2, 3, 4)
TILES = ("auto", "512", "768", "1024", "1536", "2048")  # "auto": the tile resolved at start-up
KEEP_JOBS = 8  # finished jobs whose files stay on disk (the page may still show or offer them)


@dataclass
class DemoResult:
    """One finished job: the upscale (PNG, metadata kept), the bicubic "before" and what to tell."""

    output: Path  # what `fluxsr upscale` would have written
    before: Path  # the bicubic upscale, same size, for the before/after slider
    size: tuple[int, int]  # (width, height) of the output
    tile: int  # the tile used, in output pixels
    seconds: float
    notes: list[str] = field(default_factory=list)


MAX_PIXELS = 50_000_000  # a web page's jobs stay small (the command line's default is 256 MP)


class DemoService:
    """One loaded model behind a lock; :meth:`upscale` takes a file and returns files."""

    def __init__(self, upscaler: Upscaler, *, max_pixels: int = MAX_PIXELS,
                 workdir: str | Path | None = None, auto_tile: int | None = None) -> None:
        self.upscaler = upscaler
        self.write = WriteOptions(max_pixels=max_pixels)
        self.lock = threading.Lock()
        # resolved once: later requests must not see a different tile because memory was busy
        self.auto_tile = auto_tile or upscaler.tile_pixels(UpscaleOptions(tile="auto"))
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fluxsr-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jobs: list[Path] = []

    def options(self, scale: int = 4, tile: str = "auto", color_fix: str = "wavelet") -> UpscaleOptions:
        """The per-request settings; "auto" is the tile fixed at start-up. Raises ConfigError."""
        return UpscaleOptions(scale=int(scale), tile=str(self.auto_tile) if tile == "auto" else str(tile),
                              color_fix=color_fix)

    def upscale(self, src: str | Path, *, scale: int = 4, tile: str = "auto", color_fix: str = "wavelet",
                name: str | None = None, progress: ProgressFn = no_progress,
                notice: Notice = no_notice) -> DemoResult:
        """Upscale the image file ``src``; ``name`` (the uploaded file's name) names the outputs and
        stands for ``src`` in error messages. Raises :class:`~fluxsr_cli.errors.FluxSRError`."""
        src = Path(src)
        shown = Path(name).name if name else src.name
        try:
            options = self.options(scale, tile, color_fix)
            bicubic: list[np.ndarray] = []

            def fn(rgb: np.ndarray) -> np.ndarray:
                bicubic.append(bicubic_rgb(rgb, options.scale))  # "before": the restore's own start
                return self.upscaler.upscale_array(rgb, options, progress=progress, notice=notice)

            with self.lock:  # one job at a time, from the first check to the last file
                start = time.perf_counter()
                job = self._new_job()
                stem = Path(shown).stem or "image"
                output, before = job / f"{stem}_x{options.scale}.png", job / f"{stem}_bicubic_x{options.scale}.png"
                result = upscale_file(src, output, fn, scale=options.scale, options=self.write)
                write_image(before, bicubic.pop())
                seconds = time.perf_counter() - start
        except FluxSRError as e:  # the server's temporary path means nothing to the user: name the upload
            e.args = (str(e).replace(str(src), shown),)
            raise
        assert result.out_size is not None
        return DemoResult(output, before, result.out_size, int(options.tile), seconds, list(result.notes))

    def _new_job(self) -> Path:
        """A fresh folder for one job's files; the oldest beyond :data:`KEEP_JOBS` are removed."""
        job = self.workdir / uuid.uuid4().hex[:12]
        job.mkdir()
        self._jobs.append(job)
        while len(self._jobs) > KEEP_JOBS:
            shutil.rmtree(self._jobs.pop(0), ignore_errors=True)
        return job

    def close(self) -> None:
        """Remove every job's files."""
        shutil.rmtree(self.workdir, ignore_errors=True)


ENV = "FLUXSR_"  # FLUXSR_MODEL, FLUXSR_BASE, ...: the demo's settings where no command line is (a Space)


def settings_from_env(env: Mapping[str, str] = os.environ) -> tuple[ModelOptions, int]:
    """(model options, max output pixels) from ``FLUXSR_MODEL``, ``FLUXSR_REVISION``, ``FLUXSR_BASE``,
    ``FLUXSR_VAE``, ``FLUXSR_OFFLINE``, ``FLUXSR_DEVICE``, ``FLUXSR_DTYPE``, ``FLUXSR_OFFLOAD``,
    ``FLUXSR_QUANTIZE``, ``FLUXSR_COMPILE`` and ``FLUXSR_MAX_PIXELS`` (megapixels); unset ones take
    ``fluxsr demo``'s defaults. Raises ConfigError."""
    def get(name: str) -> str | None:
        value = env.get(ENV + name, "").strip()
        return value or None

    def flag(name: str) -> bool:
        value = (get(name) or "0").lower()
        if value not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{ENV}{name}={value!r}: use 1 or 0")
        return value in ("1", "true", "yes")

    try:
        megapixels = float(get("MAX_PIXELS") or MAX_PIXELS / 1e6)
    except ValueError:
        raise ConfigError(f"{ENV}MAX_PIXELS={get('MAX_PIXELS')!r}: give a number of megapixels") from None
    defaults = ModelOptions()
    model = ModelOptions(model=get("MODEL") or defaults.model, revision=get("REVISION"), base=get("BASE"),
                         vae=get("VAE"), offline=flag("OFFLINE"), device=get("DEVICE"), dtype=get("DTYPE"),
                         offload=get("OFFLOAD") or defaults.offload, quantize=get("QUANTIZE") or defaults.quantize,
                         compile=flag("COMPILE"))
    return model, WriteOptions(max_pixels=int(megapixels * 1e6)).max_pixels
