"""The model card of an exported checkpoint: ``README.md`` with the Hub's YAML front matter and what the run did.

The front matter names the base by its Hub id, the FLUX.1 [dev] Non-Commercial License (every
checkpoint fluxsr trains is a derivative of FLUX.1-dev), ``pipeline_tag: image-to-image`` and
``library_name: fluxsr``: the checkpoint is not a diffusers pipeline (diffusers could load the LoRA
into ``FluxPipeline``, but that samples text-to-image; the one-step restore from ``z_L`` at ``t_L``
and the fixed conditioning are fluxsr's), so a diffusers tag would show a snippet that does not
super-resolve. The body holds the settings (T_L, loss weights, steps), the full training config
without local paths, the ``fluxsr eval --json`` results given, and a before/after picture.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxsr_cli.errors import InputError
from fluxsr_cli.model.hub import DEFAULT_BASE, is_local_ref
from fluxsr_cli.train.config import DistillConfig

LICENSE = {
    "license": "other",
    "license_name": "flux-1-dev-non-commercial-license",
    "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
}
LIBRARY_NAME = "fluxsr"
LOCAL_PATHS = ("data", "output_dir", "lpips_cache")  # settings that only mean something on the training machine


@dataclass(frozen=True)
class CardOptions:
    """What an export's model card shows beyond the run itself."""

    evals: tuple[Path, ...] = ()  # `fluxsr eval --json` results
    image: Path | None = None  # a before/after picture; None: the run's last validation grid
    repo_id: str | None = None  # where it will be published (its usage example names it)
    base_id: str | None = None  # the Hub id of a base the run read from a local folder


def published_base(base_model: str | Path, base_id: str | None = None) -> tuple[str, str | None] | None:
    """(Hub id, revision) of the base to name in a published checkpoint, or None when unknown.

    ``base_id`` wins; a repo id is itself; a folder of the Hugging Face cache
    (``.../models--org--name/snapshots/COMMIT``) is that repo at that commit; any other local folder is unknown.
    """
    if base_id:
        return base_id, None
    if not is_local_ref(base_model):
        return str(base_model), None
    m = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]([0-9a-f]{40})", str(Path(base_model).resolve()))
    return (f"{m.group(1)}/{m.group(2)}", m.group(3)) if m else None


def card_config(config: DistillConfig, base: str | None) -> dict[str, Any]:
    """The training settings as published: no local paths; the base as its Hub id (or left out)."""
    from fluxsr_cli.configs import to_dict

    data = {k: v for k, v in to_dict(config).items() if k not in LOCAL_PATHS and v is not None}
    data.pop("base_model")
    return {"base_model": base, **data} if base else data


def read_eval(path: Path) -> dict[str, Any]:
    """A ``fluxsr eval --json`` file (its means, counts, metrics and the paper's row), checked."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read it as JSON ({str(e).splitlines()[0]}); give a file from "
                         "`fluxsr eval --json`") from None
    if not isinstance(report, dict) or not isinstance(report.get("means"), dict) or "metrics" not in report:
        raise InputError(f"{path}: not a `fluxsr eval --json` result (no metrics and means)")
    return report


def eval_table(report: dict[str, Any], name: str) -> str:
    """One Markdown table: each metric's mean (with its direction), the images it covers, the paper's row."""
    from fluxsr_cli.quality.evaluate import METRICS

    dataset = (report.get("config") or {}).get("dataset")
    paper = report.get("paper") or {}
    head = ["metric", "this model", "images"] + ([f"FluxSR paper ({dataset})"] if paper else [])
    lines = [f"### {dataset or name}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for metric in report["metrics"]:
        arrow = "" if metric not in METRICS else (" ↓" if METRICS[metric].lower_better else " ↑")
        cells = [f"{metric}{arrow}", _score(report["means"].get(metric)), str(report.get("counts", {}).get(metric, ""))]
        lines.append("| " + " | ".join(cells + ([_score(paper.get(metric))] if paper else [])) + " |")
    return "\n".join(lines)


def _score(v: Any) -> str:
    if isinstance(v, (int, float)) and math.isfinite(v):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def model_card(config: DistillConfig, step: int, base: str | None, evals: Sequence[tuple[str, dict]] = (),
               image: str | None = None, image_caption: str = "", repo_id: str | None = None,
               pairs: int | None = None) -> str:
    """The text of ``README.md``: YAML front matter (huggingface_hub's ``ModelCardData``) and Markdown."""
    from huggingface_hub import ModelCardData

    from fluxsr_cli.configs import dumps_toml

    lora = config.finetune == "lora"
    data = ModelCardData(
        base_model=base, base_model_relation="adapter" if lora else "finetune", **LICENSE,
        pipeline_tag="image-to-image", library_name=LIBRARY_NAME,
        tags=["super-resolution", "flux"] + (["lora"] if lora else []) + ["fluxsr"],
    )
    tuned = (f"a rank-{config.lora_rank} LoRA (alpha {config.lora_alpha:g}) of the transformer" if lora
             else "a full fine-tune of the transformer")
    w = config.weights
    rows = [("optimizer steps", str(step)), ("T_L (flow time of the LR latent)", f"{config.t_l:g}"),
            ("guidance embedding", f"{config.guidance:g}"), ("weights", tuned),
            ("loss", f"λ_FTD {w.ftd:g} · L_FTD + λ_rec {w.rec:g} · (MSE + λ_TV {w.tv:g} · TV-LPIPS, γ {w.gamma:g})"
                     f" + λ_ADL {w.adl:g} · L_ADL"),
            ("optimizer", f"AdamW, lr {config.lr:g} ({config.lr_schedule}, {config.warmup_steps} warm-up steps)"),
            ("batch", f"{config.batch_size} per process x {config.gradient_accumulation} accumulation, "
                      f"{config.crop_size or 'whole'} px crops"),
            ("precision", f"{config.mixed_precision} mixed precision"), ("seed", str(config.seed))]
    if pairs is not None:
        rows.insert(1, ("training pairs", f"{pairs} (teacher noise-image pairs from `fluxsr pairs`)"))
    model_ref = repo_id or "path/to/this/folder"
    parts = [
        f"# {repo_id.split('/')[-1] if repo_id else 'FluxSR checkpoint'}",
        f"One-step real-world x4 super-resolution with FLUX.1-dev: {tuned}, trained with Flow Trajectory "
        "Distillation (FluxSR, Li et al., ICML 2025) by the `fluxsr` package. Not from the paper's authors.",
        "## Use",
        f"```bash\nfluxsr upscale photo.jpg -o photo_x4.png --model {model_ref}\n```",
        ("The base, FLUX.1-dev, is gated: accept its licence on the Hub and log in (`hf auth login`) first. "
         if base == DEFAULT_BASE else f"The base is {base or 'a FLUX.1-dev-compatible model'}. ")
        + "Inference needs no text encoder: the conditioning is `embeddings.safetensors`.",
        "## Licence",
        "These weights derive from FLUX.1-dev and are released under the FLUX.1 [dev] Non-Commercial License "
        f"({LICENSE['license_link']}): non-commercial use only; the licence also restricts training other "
        "models on outputs.",
        "## Training",
        "| setting | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows),
        "<details><summary>Full training configuration (<code>[distill]</code>)</summary>\n\n```toml\n"
        + dumps_toml({"distill": card_config(config, base)}).strip() + "\n```\n\n</details>",
    ]
    if evals:
        parts += ["## Evaluation", "Means over the images of each set, from `fluxsr eval` (↑ higher is better, "
                  "↓ lower is better)."] + [eval_table(report, name) for name, report in evals]
    if image:
        parts += ["## Before / after", f"![{image_caption or 'before and after'}]({image})"
                  + (f"\n\n{image_caption}" if image_caption else "")]
    parts += ["## Files", "`fluxsr.json` (settings), `embeddings.safetensors` (the fixed conditioning), "
              + ("`lora.safetensors` (diffusers LoRA layout)" if lora else "`transformer/` (diffusers layout)") + "."]
    return "---\n" + data.to_yaml() + "\n---\n\n" + "\n\n".join(parts) + "\n"


def validation_grid(run_dir: Path, step: int) -> Path | None:
    """The run's last validation grid at or before ``step`` (``validation/step-NNNNNNN.png``)."""
    grids = [(int(p.stem.removeprefix("step-")), p) for p in Path(run_dir, "validation").glob("step-*.png")
             if p.stem.removeprefix("step-").isdigit()]
    grids = sorted(g for g in grids if g[0] <= step)
    return grids[-1][1] if grids else None


def count_pairs(data: Path) -> int | None:
    """Items in a `fluxsr pairs` data set (lines of its ``manifest.jsonl``), None when not readable here."""
    try:
        return sum(1 for line in Path(data, "manifest.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        return None


def card_files(config: DistillConfig, run_dir: Path, step: int, base: str | None,
               options: CardOptions) -> dict[str, bytes]:
    """The files a card brings into the export: ``README.md`` and its picture under ``images/``."""
    evals = [(Path(p).stem, read_eval(Path(p))) for p in options.evals]
    picture, caption = options.image, ""
    if picture is None:
        picture = validation_grid(run_dir, step)
        if picture is not None:
            caption = (f"Held-out pairs at step {picture.stem.removeprefix('step-').lstrip('0') or '0'}; columns: "
                       "the input (z_L decoded), the one-step output, the teacher's image x_0.")
    elif not Path(picture).is_file():
        raise InputError(f"{picture}: no such image; give an existing before/after picture")
    files: dict[str, bytes] = {}
    name = None
    if picture is not None:
        name = f"images/{'before_after' if options.image else 'validation'}{Path(picture).suffix.lower()}"
        files[name] = Path(picture).read_bytes()
    text = model_card(config, step, base, evals, name, caption, options.repo_id, count_pairs(config.data))
    files["README.md"] = text.encode()
    return files

