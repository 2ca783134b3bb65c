"""Measuring quality: the paper's metrics on a folder of outputs (``fluxsr eval`` as a library).

Predictions and ground truth are matched by file name (stem). Full-reference metrics (PSNR, SSIM on
Y, LPIPS, DISTS) run when a ground-truth folder is given; no-reference metrics (MUSIQ, MANIQA, TOPIQ,
CLIPIQA, NIQE) need only the predictions. PSNR, SSIM, LPIPS-Alex, LPIPS-VGG and DISTS are computed
here, with nothing extra installed (their weights are fetched once, ``weights.py``); the no-reference
metrics come from pyiqa, the field's standard toolbox (the ``[eval]`` extra), through a thin adapter. A metric that
cannot load (pyiqa absent, weights not downloadable) is reported as unavailable with the reason and
the others still run; unreadable files, missing pairs and size mismatches are reported per file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fluxsr_cli.atomic import atomic_write_text
from fluxsr_cli.errors import ConfigError, FluxSRError, InputError, one_line
from fluxsr_cli.images.reading import read_image
from fluxsr_cli.progress import ProgressFn, no_progress
from fluxsr_cli.quality.metrics import psnr_y, ssim_y

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: whether it needs ground truth, its direction, and where it comes from."""

    name: str
    full_reference: bool
    lower_better: bool
    pyiqa_name: str | None = None  # None: computed by fluxsr itself (``PYIQA_EQUIVALENT`` names pyiqa's)


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("psnr", True, False),
        MetricSpec("ssim", True, False),
        MetricSpec("lpips-alex", True, True),
        MetricSpec("lpips-vgg", True, True),
        MetricSpec("dists", True, True),
        MetricSpec("musiq", False, False, "musiq"),
        MetricSpec("maniqa", False, False, "maniqa"),
        MetricSpec("topiq", False, False, "topiq_nr"),
        MetricSpec("clipiqa", False, False, "clipiqa"),
        MetricSpec("niqe", False, True, "niqe"),
        MetricSpec("qalign", False, False, "qalign"),  # a 7B model: only on request
    )
}
DEFAULT_METRICS = ("psnr", "ssim", "lpips-alex", "lpips-vgg", "dists", "musiq", "maniqa", "topiq", "clipiqa", "niqe")
# The metrics fluxsr computes itself, by the name pyiqa gives the same metric (both on Y; pyiqa's
# ``crop_border`` argument does what ``--crop-border`` does).
PYIQA_EQUIVALENT = {"psnr": "psnry", "ssim": "ssim", "lpips-alex": "lpips", "lpips-vgg": "lpips-vgg", "dists": "dists"}
LEARNED = ("lpips-alex", "lpips-vgg", "dists")  # computed here from published weights (weights.py)

# docs/method.md section 8: FluxSR's published means (x4, full-size images). The paper's LPIPS column is
# taken to be pyiqa's default LPIPS (AlexNet), its TOPIQ the no-reference TOPIQ.
PAPER_FLUXSR: dict[str, dict[str, float]] = {
    "realsr": {"psnr": 24.83, "ssim": 0.7175, "lpips-alex": 0.3200, "dists": 0.1910, "musiq": 68.95,
               "maniqa": 0.5335, "topiq": 0.6699, "qalign": 4.3781},
    "div2k-val": {"psnr": 22.30, "ssim": 0.6177, "lpips-alex": 0.3397, "dists": 0.1634, "musiq": 68.72,
                  "maniqa": 0.4615, "topiq": 0.6426, "qalign": 4.6128},
    "drealsr": {"psnr": 25.92, "ssim": 0.7592, "lpips-alex": 0.3418, "dists": 0.1628, "musiq": 37.82,
                "maniqa": 0.5310, "qalign": 4.3356},
}


@dataclass(frozen=True)
class EvalConfig:
    """What ``fluxsr eval`` measures. ``metrics`` None: the defaults that apply (FR ones need gt_dir)."""

    pred_dir: Path
    gt_dir: Path | None = None
    crop_border: int = 4
    metrics: tuple[str, ...] | None = None
    dataset: str | None = None
    device: str = "auto"
    weights_dir: Path | None = None  # LPIPS weights; None: weights.default_weights_dir()

    def __post_init__(self) -> None:
        if self.crop_border < 0:
            raise ConfigError(f"crop_border must be >= 0, got {self.crop_border}")
        unknown = [m for m in self.metrics or () if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        if self.metrics is not None and not self.metrics:
            raise ConfigError("metrics is empty; name at least one of " + ", ".join(METRICS))
        if self.dataset is not None and self.dataset not in PAPER_FLUXSR:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose from {', '.join(PAPER_FLUXSR)}")

    def selected(self) -> tuple[str, ...]:
        if self.metrics is not None:
            return tuple(dict.fromkeys(self.metrics))
        return tuple(m for m in DEFAULT_METRICS if self.gt_dir is not None or not METRICS[m].full_reference)


@dataclass
class ImageResult:
    """One prediction (or one ground truth without prediction): its scores and what went wrong."""

    name: str
    pred: Path | None
    gt: Path | None
    scores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EvalReport:
    config: EvalConfig
    metrics: tuple[str, ...]  # those that ran
    unavailable: dict[str, str]  # metric -> reason
    rows: tuple[ImageResult, ...]
    means: dict[str, float]
    counts: dict[str, int]  # images that contributed to each mean

    @property
    def paper(self) -> dict[str, float] | None:
        return PAPER_FLUXSR[self.config.dataset] if self.config.dataset else None

    @property
    def problems(self) -> list[ImageResult]:
        return [r for r in self.rows if r.notes]


Scorer = Callable[[np.ndarray, "np.ndarray | None"], float]


class _Unavailable(Exception):
    """A metric that cannot run here; the message is the reason shown to the user."""


def _list_images(folder: Path) -> dict[str, list[Path]]:
    """stem -> the image files of that name in ``folder`` (several when only the suffix differs)."""
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, []).append(p)
    return by_stem


def match_files(pred_dir: Path, gt_dir: Path | None) -> list[ImageResult]:
    """One row per stem in either folder, sorted; rows without a partner or with duplicates carry a note."""
    preds = _list_images(pred_dir)
    gts = _list_images(gt_dir) if gt_dir is not None else {}
    rows = []
    for stem in sorted(set(preds) | set(gts)):
        row = ImageResult(stem, preds[stem][0] if stem in preds else None, gts[stem][0] if stem in gts else None)
        for files in (preds.get(stem, []), gts.get(stem, [])):
            if len(files) > 1:
                row.notes.append(f"{', '.join(f.name for f in files)} share a name in {files[0].parent}; using {files[0].name}")
        if gt_dir is not None and row.gt is None:
            row.notes.append(f"no ground truth named {stem}.* in {gt_dir}; full-reference metrics skipped")
        if row.pred is None:
            row.notes.append(f"no prediction named {stem}.* in {pred_dir}")
        rows.append(row)
    return rows


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _to_tensor(img: np.ndarray, device: str):  # -> torch.Tensor [1, 3, H, W]
    import torch

    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None].to(device)


def _learned_scorers(names: tuple[str, ...], device: str, weights_dir: Path | None
                     ) -> tuple[dict[str, Scorer], dict[str, str]]:
    """LPIPS-Alex, LPIPS-VGG and DISTS that can run, and why the others cannot: their weight files are
    resolved together (one message names every file missing), and a metric runs when all of its own are there."""
    import torch

    from fluxsr_cli.quality.dists import DISTS, DISTS_WEIGHTS
    from fluxsr_cli.quality.lpips import LPIPS
    from fluxsr_cli.quality.lpips import WEIGHTS as LPIPS_WEIGHTS
    from fluxsr_cli.quality.weights import fetch_weight_files

    def files_of(name: str) -> tuple:
        return DISTS_WEIGHTS if name == "dists" else LPIPS_WEIGHTS[name.removeprefix("lpips-")]

    def build(name: str) -> torch.nn.Module:
        return DISTS() if name == "dists" else LPIPS(name.removeprefix("lpips-"))

    states, error = fetch_weight_files([f for n in names for f in files_of(n)], weights_dir, "metric weights")

    def scorer(model: torch.nn.Module) -> Scorer:
        def score(pred: np.ndarray, gt: np.ndarray | None) -> float:
            with torch.no_grad():
                return float(model(_to_tensor(pred, device), _to_tensor(gt, device))[0])

        return score

    scorers, unavailable = {}, {}
    for name in names:
        files = files_of(name)
        if not all(f.name in states for f in files):
            unavailable[name] = str(error)
            continue
        model = build(name)
        model.load_weights(*(states[f.name] for f in files))
        scorers[name] = scorer(model.requires_grad_(False).eval().to(device))
    return scorers, unavailable


def _pyiqa_scorer(spec: MetricSpec, device: str) -> Scorer:
    """A pyiqa metric as a scorer on [H, W, 3] arrays; pyiqa wants [B, 3, H, W] RGB in [0, 1]."""
    try:
        import pyiqa
    except Exception as e:  # ImportError, or torchvision failing to import beside this torch
        raise _Unavailable(f"needs pyiqa ({one_line(e)[:200]}); install the [eval] extra: "
                           "pip install 'fluxsr[eval]' (in a checkout: pip install -e '.[eval]')") from None
    try:
        metric = pyiqa.create_metric(spec.pyiqa_name, device=device, as_loss=False)
    except Exception as e:  # weights not downloadable offline, unknown name in an old pyiqa, ...
        raise _Unavailable(f"pyiqa {spec.pyiqa_name} cannot load ({one_line(e)[:200]})") from None

    import torch

    def score(pred: np.ndarray, gt: np.ndarray | None) -> float:
        with torch.no_grad():
            x = _to_tensor(pred, device)
            out = metric(x, _to_tensor(gt, device)) if spec.full_reference else metric(x)
        return float(torch.as_tensor(out).flatten()[0])

    return score


def load_scorers(
    names: tuple[str, ...],
    device: str,
    crop_border: int = 0,
    weights_dir: Path | None = None,
    progress: ProgressFn = no_progress,
) -> tuple[dict[str, Scorer], dict[str, str]]:
    """Scorers ``(pred, gt) -> float`` for ``names`` that can run here, and why each other one cannot.

    PSNR and SSIM crop ``crop_border`` px from every side; ``gt`` is None for no-reference metrics.
    """
    scorers: dict[str, Scorer] = {}
    unavailable: dict[str, str] = {}
    learned = tuple(n for n in names if n in LEARNED)
    if learned:
        progress("loading metrics", 0, len(names))
        found, missing = _learned_scorers(learned, device, weights_dir)
        scorers.update(found)
        unavailable.update(missing)
    rest = [n for n in names if n not in LEARNED]
    for i, name in enumerate(rest):
        progress("loading metrics", len(learned) + i, len(names))
        try:
            if name == "psnr":
                scorers[name] = lambda p, g: psnr_y(p, g, crop_border)
            elif name == "ssim":
                scorers[name] = lambda p, g: ssim_y(p, g, crop_border)
            else:
                scorers[name] = _pyiqa_scorer(METRICS[name], device)
        except _Unavailable as e:
            unavailable[name] = str(e)
    progress("loading metrics", len(names), len(names))
    return scorers, unavailable


def group_reasons(unavailable: dict[str, str]) -> dict[str, list[str]]:
    """reason -> the metrics it applies to, in order: one line per reason instead of one per metric."""
    groups: dict[str, list[str]] = {}
    for name, reason in unavailable.items():
        groups.setdefault(reason, []).append(name)
    return groups


def _score_row(row: ImageResult, scorers: dict[str, Scorer]) -> None:
    try:
        pred = read_image(row.pred).rgb
    except FluxSRError as e:
        row.notes.append(f"unreadable prediction: {e}")
        return
    gt = None
    if row.gt is not None:
        try:
            gt = read_image(row.gt).rgb
        except FluxSRError as e:
            row.notes.append(f"unreadable ground truth: {e}")
        if gt is not None and gt.shape != pred.shape:
            h, w = pred.shape[:2]
            row.notes.append(f"size {w}x{h} differs from ground truth {gt.shape[1]}x{gt.shape[0]}; full-reference metrics skipped")
            gt = None
    for name, scorer in scorers.items():
        full_ref = METRICS[name].full_reference
        if full_ref and gt is None:
            continue
        try:
            row.scores[name] = scorer(pred, gt if full_ref else None)
        except Exception as e:  # one metric failing on one image must not hide the others
            row.notes.append(f"{name} failed: {one_line(e)[:200]}")


def evaluate(config: EvalConfig, progress: ProgressFn = no_progress) -> EvalReport:
    """Score every prediction in ``config.pred_dir``; see the module docstring."""
    for label, folder in (("prediction", config.pred_dir), ("ground-truth", config.gt_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{folder}: {label} folder not found; give an existing folder of images")
    rows = match_files(Path(config.pred_dir), Path(config.gt_dir) if config.gt_dir else None)
    if not any(r.pred for r in rows):
        raise InputError(f"{config.pred_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) to evaluate")
    names = config.selected()
    unavailable = {n: "full-reference: needs --gt GT_DIR" for n in names if METRICS[n].full_reference and not config.gt_dir}
    device = _resolve_device(config.device)
    wanted = tuple(n for n in names if n not in unavailable)
    scorers, not_loaded = load_scorers(wanted, device, config.crop_border, config.weights_dir, progress)
    unavailable.update(not_loaded)
    if not scorers:  # each reason says its own fix
        reasons = " | ".join(f"{', '.join(names)}: {reason}" for reason, names in group_reasons(unavailable).items())
        hint = "" if config.gt_dir else "; with --gt GT_DIR, PSNR, SSIM, LPIPS and DISTS run with nothing extra installed"
        raise InputError(f"no metric can run here: {reasons}{hint}")
    todo = [r for r in rows if r.pred is not None]
    for i, row in enumerate(todo):
        progress("images", i, len(todo))
        _score_row(row, scorers)
    progress("images", len(todo), len(todo))
    ran = tuple(n for n in names if n in scorers)
    means, counts = {}, {}
    for name in ran:
        values = [r.scores[name] for r in rows if name in r.scores]
        counts[name] = len(values)
        means[name] = float(np.mean(values)) if values else math.nan
    return EvalReport(config, ran, unavailable, tuple(rows), means, counts)


def report_to_dict(report: EvalReport) -> dict:
    """Everything in the report as JSON-ready data (paths as strings, inf/nan as strings)."""

    def num(v: float) -> float | str:
        return v if math.isfinite(v) else str(v)

    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(report.config).items()}
    return {
        "config": cfg,
        "metrics": list(report.metrics),
        "unavailable": report.unavailable,
        "means": {k: num(v) for k, v in report.means.items()},
        "counts": report.counts,
        "paper": report.paper,
        "images": [
            {"name": r.name, "pred": str(r.pred) if r.pred else None, "gt": str(r.gt) if r.gt else None,
             "scores": {k: num(v) for k, v in r.scores.items()}, "notes": r.notes}
            for r in report.rows
        ],
    }


def write_json(report: EvalReport, path: Path, overwrite: bool = False) -> None:
    atomic_write_text(Path(path), json.dumps(report_to_dict(report), indent=2) + "\n", overwrite=overwrite)


def write_csv(report: EvalReport, path: Path, overwrite: bool = False) -> None:
    """One line per image: name, pred, gt, one column per metric that ran (empty: not scored), notes."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["name", "pred", "gt", *report.metrics, "notes"])
    for r in report.rows:
        scores = [repr(r.scores[m]) if m in r.scores else "" for m in report.metrics]
        writer.writerow([r.name, r.pred or "", r.gt or "", *scores, " | ".join(r.notes)])
    atomic_write_text(Path(path), buf.getvalue(), overwrite=overwrite)
