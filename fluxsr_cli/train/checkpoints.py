"""Training checkpoints (atomic, the last K kept, resumable) and their export as a fluxsr checkpoint.

A run folder holds ``distill.toml``, ``embeddings.safetensors``, ``checkpoints/step-NNNNNNN/`` (the
accelerate state: with LoRA training only the LoRA, ``lora.safetensors``, never the frozen base),
``logs/``, ``validation/step-NNNNNNN.png`` and ``final/`` (the exported checkpoint).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.atomic import finish_temporary, make_temporary
from fluxsr_cli.errors import CheckpointError, InputError
from fluxsr_cli.progress import Notice
from fluxsr_cli.train.config import DistillConfig, load_distill_config, lora_config
from fluxsr_cli.train.model_card import CardOptions

LORA_FILE = "lora.safetensors"
STATE_FILE = "trainer_state.json"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints ``step-NNNNNNN`` of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def resume_point(run_dir: Path, resume: str | None, notice: Notice) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            notice(f"{run_dir}: no checkpoint yet; starting from step 0")
            return None
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise InputError(f"{path}: not a training checkpoint (no {STATE_FILE}); give 'latest' or a step-* folder")
    return path


def save_training_state(accelerator: Any, run_dir: Path, step: int, keep_last: int) -> Path:
    """accelerate state of ``step`` written to a temporary folder and renamed into place; old ones pruned.

    The main process makes the temporary folder (named for it, see :mod:`fluxsr_cli.atomic`) and
    tells the others its name; every process writes its part of the state into it.
    """
    from accelerate.utils import broadcast_object_list

    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step:07d}"
    name: list[str | None] = [None]
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        name[0] = make_temporary(final, folder=True).name
    tmp = folder / broadcast_object_list(name)[0]
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step}) + "\n")
            if final.exists():
                shutil.rmtree(final)
            finish_temporary(tmp, final)
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if accelerator.is_main_process:
            finish_temporary(tmp)
        raise
    accelerator.wait_for_everyone()
    return final


def export_checkpoint(run_dir: Path, out: Path, checkpoint: Path | None = None, overwrite: bool = False,
                      card: CardOptions | None = None) -> Path:
    """Write the fluxsr checkpoint format (``fluxsr upscale --model OUT``) from a run's latest (or given) state,
    with its model card (``README.md``).

    ``fluxsr.json`` names the base by its Hub id when one is known (:func:`published_base`); the local
    folder of a base without one stays there, so the export still loads on this machine, and
    publishing it (``card.repo_id``) is refused. The data set's local path is not exported: the
    run's ``distill.toml`` keeps it.
    """
    from peft import get_peft_model_state_dict  # noqa: F401  (peft must be importable to load it back)

    from fluxsr_cli.model.checkpoint import CheckpointInfo, load_safetensors, save_checkpoint
    from fluxsr_cli.train.model_card import card_files, published_base

    card = card or CardOptions()
    run_dir = Path(run_dir)
    if not (run_dir / "distill.toml").is_file():
        raise InputError(f"{run_dir}: not a distill run folder (no distill.toml)")
    config = load_distill_config(run_dir / "distill.toml")
    base = published_base(config.base_model, card.base_id)
    if base is None and card.repo_id:
        raise InputError(f"{run_dir}: trained on the local base {config.base_model}, whose Hub id is unknown; pass "
                         "--base-id (e.g. black-forest-labs/FLUX.1-dev) so the published checkpoint names a base "
                         "others can download")
    found = list_checkpoints(run_dir)
    state = Path(checkpoint) if checkpoint else (found[-1] if found else None)
    if state is None:
        raise InputError(f"{run_dir}: holds no finished checkpoint yet; train at least checkpoint_every steps")
    step = json.loads((state / STATE_FILE).read_text())["step"]
    embeddings = load_safetensors(run_dir / "embeddings.safetensors")
    base_model, base_revision = base if base else (str(config.base_model), None)
    info = CheckpointInfo(base_model=base_model, base_revision=config.base_revision or base_revision,
                          t_l=config.t_l, guidance=config.guidance,
                          lora_rank=config.lora_rank if config.finetune == "lora" else None,
                          lora_alpha=config.lora_alpha if config.finetune == "lora" else None,
                          extra={"trained_steps": step, "finetune": config.finetune})
    files = card_files(config, run_dir, step, base[0] if base else None, card)
    if config.finetune == "lora":
        lora = load_safetensors(state / LORA_FILE)
        meta = lora_config(config).to_dict()
        meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}
        return save_checkpoint(Path(out), info, embeddings, lora_state_dict=lora, lora_config=meta,
                               overwrite=overwrite, files=files)
    transformer = _full_transformer(config, state)
    return save_checkpoint(Path(out), info, embeddings, transformer=transformer, overwrite=overwrite, files=files)


def _full_transformer(config: DistillConfig, state: Path):
    """The fully fine-tuned transformer from an accelerate state (unsharded model weights)."""
    from fluxsr_cli.model.checkpoint import load_safetensors
    from fluxsr_cli.model.hub import BASE_FILES, resolve
    from fluxsr_cli.model.loading import load_transformer

    base = resolve(config.base_model, revision=config.base_revision, offline=config.offline, allow_patterns=BASE_FILES)
    transformer = load_transformer(base, torch.float32)
    files = sorted(state.glob("model*.safetensors")) or sorted(state.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{state}: no unsharded model weights; with FSDP set "
                              "fsdp_state_dict_type: FULL_STATE_DICT in the accelerate config")
    weights = load_safetensors(files[0]) if files[0].suffix == ".safetensors" else torch.load(
        files[0], map_location="cpu", weights_only=True)
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    transformer.load_state_dict(weights, strict=True)
    return transformer


def push_checkpoint(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported checkpoint folder to the Hub model repo ``repo_id`` (one commit); return its URL.

    A checkpoint whose ``fluxsr.json`` names a local base is refused: nobody else could load it.
    """
    from fluxsr_cli.model.hub import is_local_ref, upload_folder

    settings = Path(folder) / "fluxsr.json"
    try:
        info = json.loads(settings.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{settings}: cannot read it ({e}); export the checkpoint again") from None
    base = str(info.get("base_model", ""))
    if not base or is_local_ref(base):
        raise InputError(f"{settings}: names the local base {base!r}; export again with --base-id REPO (the Hub id "
                         "of that base) before publishing")
    steps = info.get("extra", {}).get("trained_steps")
    message = "Upload fluxsr checkpoint" + (f" ({steps} steps)" if steps is not None else "")
    return upload_folder(Path(folder), repo_id, private=private, message=message)
