"""The distillation loop (``fluxsr distill``): data, models, optimizer and checkpoints through accelerate.

accelerate handles devices, mixed precision, DDP/FSDP, gradient accumulation, trackers and the
training state; the step itself is :func:`fluxsr_cli.train.step.training_step`, the checkpoints
and export :mod:`fluxsr_cli.train.checkpoints`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.errors import CheckpointError, ConfigError, InputError
from fluxsr_cli.model.hub import DEFAULT_BASE
from fluxsr_cli.progress import Notice, ProgressFn, no_notice, no_progress
from fluxsr_cli.train.checkpoints import (
    LORA_FILE,
    STATE_FILE,
    export_checkpoint,
    list_checkpoints,
    resume_point,
    save_training_state,
)
from fluxsr_cli.train.config import SECTION, DistillConfig, lora_config
from fluxsr_cli.train.step import (
    Student,
    batch_indices,
    collate,
    random_crop,
    step_generator,
    training_step,
    unwrap_student,
)
from fluxsr_cli.train.validation import validate


@dataclass
class DistillResult:
    run_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per optimizer step
    validation: list[dict[str, float]] = field(default_factory=list)
    exported: Path | None = None
    removed: int = 0  # temporaries of killed runs removed from the run folder first
    student: Student | None = None  # the trained student (unwrapped), for evaluation in the same process


def distill(config: DistillConfig, resume: str | None = None, progress: ProgressFn = no_progress,
            notice: Notice = no_notice) -> DistillResult:
    """Train the one-step student on ``config.data``; returns the history (and the export, if asked).

    ``resume``: ``"latest"`` (the newest checkpoint of ``config.output_dir``; none: start fresh) or a
    checkpoint folder. A fresh start refuses a run folder that already holds checkpoints. First the
    main process removes the temporaries killed runs left in the run folder (unfinished checkpoints too).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from fluxsr_cli.atomic import sweep_temporaries

    started = time.time()
    run_dir = Path(config.output_dir)
    start_from = resume_point(run_dir, resume, notice)
    if start_from is None and list_checkpoints(run_dir):
        raise InputError(f"{run_dir}: holds checkpoints of an earlier run; pass --resume latest to continue it, "
                         "or set output_dir to a new folder")
    on_gpu = torch.cuda.is_available() and not config.cpu
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision if on_gpu else "no",
        gradient_accumulation_steps=config.gradient_accumulation,
        log_with=list(config.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        step_scheduler_with_optimizer=False,
        cpu=config.cpu,
    )
    removed = len(sweep_temporaries(run_dir, started=started)) if accelerator.is_main_process else 0
    accelerator.wait_for_everyone()
    setup = _setup(config, accelerator, run_dir, notice)
    student, vae, optimizer, scheduler, params = setup["student"], setup["vae"], setup["optimizer"], \
        setup["scheduler"], setup["params"]
    step = 0
    if start_from is not None:
        accelerator.load_state(str(start_from))
        step = json.loads((start_from / STATE_FILE).read_text())["step"]
        notice(f"resumed from {start_from} at step {step}")
    if accelerator.is_main_process:
        _write_run_files(config, run_dir, setup["embeddings"])
    if config.trackers:
        accelerator.init_trackers("fluxsr-distill", config=_tracker_config(config))

    dataset, train_ids, val_ids = setup["dataset"], setup["train_ids"], setup["val_ids"]
    weights = config.weights
    result = DistillResult(run_dir, step, removed=removed)
    rank, world = accelerator.process_index, accelerator.num_processes
    micro = step * config.gradient_accumulation
    progress("steps", step, config.max_steps)
    while step < config.max_steps:
        start = time.perf_counter()
        sums: dict[str, float] = {}
        grad_norm = float("nan")
        for _ in range(config.gradient_accumulation):
            g = step_generator(config.seed, micro, rank)
            ids = batch_indices(len(train_ids), config.batch_size, micro, rank, world, config.seed)
            items = [random_crop(dataset[train_ids[i]], config.crop_size, g) for i in ids]
            batch = {k: v.to(accelerator.device) for k, v in collate(items, config.data).items()}
            with accelerator.accumulate(student):
                loss, terms = training_step(student, vae, batch, config.t_l, weights, g, setup["lpips"],
                                            setup["adl_blocks"])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm or math.inf))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(accelerator.reduce(v.float(), "mean")) / config.gradient_accumulation
            micro += 1
        scheduler.step()
        step += 1
        record = {"step": step, **sums, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                  "step_time": time.perf_counter() - start}
        result.history.append(record)
        if config.trackers and (step % config.log_every == 0 or step == config.max_steps):
            accelerator.log({("train/" + k): v for k, v in record.items() if k != "step"}, step=step)
        if config.validate_every and (step % config.validate_every == 0 or step == config.max_steps):
            val = validate(unwrap_student(student), vae, dataset, val_ids, config.t_l, run_dir / "validation" / f"step-{step:07d}.png",
                           write=accelerator.is_main_process)
            result.validation.append({"step": step, **val})
            if config.trackers:
                accelerator.log({("val/" + k): v for k, v in val.items()}, step=step)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            save_training_state(accelerator, run_dir, step, config.keep_last)
        progress("steps", step, config.max_steps)
    result.step = step
    result.student = unwrap_student(accelerator.unwrap_model(student))
    accelerator.wait_for_everyone()
    if config.export_on_finish and accelerator.is_main_process:
        result.exported = export_checkpoint(run_dir, run_dir / "final", overwrite=True)
    accelerator.end_training()
    return result


def _setup(config: DistillConfig, accelerator: Any, run_dir: Path, notice: Notice) -> dict[str, Any]:
    """Data, models (frozen base + trainable LoRA), optimizer and schedule, prepared by accelerate."""
    from diffusers.optimization import get_scheduler

    from fluxsr_cli.model.hub import BASE_FILES, FLUX_LICENCE_NOTE, resolve
    from fluxsr_cli.model.loading import load_transformer, load_vae
    from fluxsr_cli.train.adl import parse_blocks
    from fluxsr_cli.train.dataset import PairDataset, load_embeddings

    if not Path(config.data).is_dir():
        raise InputError(f"{config.data}: no such data folder; run `fluxsr pairs` first or fix distill.data")
    dataset = PairDataset(config.data)
    n = len(dataset)
    if n <= config.val_count:
        raise ConfigError(f"{config.data}: {n} pairs but val_count = {config.val_count} are held out; "
                          "make more pairs or lower distill.val_count")
    train_ids, val_ids = list(range(n - config.val_count)), list(range(n - config.val_count, n))
    embeddings = load_embeddings(config.data)
    device = accelerator.device
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        config.base_dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    if str(config.base_model) == DEFAULT_BASE:
        notice(FLUX_LICENCE_NOTE)
    base = resolve(config.base_model, revision=config.base_revision, offline=config.offline,
                   allow_patterns=BASE_FILES, notice=notice)
    transformer = load_transformer(base, dtype)
    vae = load_vae(base, dtype).to(device)  # frozen; only its decoder runs (latents come from the data set)
    for name, got, want in (("prompt_embeds", embeddings["prompt_embeds"].shape[-1],
                             transformer.config.joint_attention_dim),
                            ("pooled_prompt_embeds", embeddings["pooled_prompt_embeds"].shape[-1],
                             transformer.config.pooled_projection_dim)):
        if got != want:
            raise InputError(f"{config.data}: {name} has width {got} but the transformer of {config.base_model} "
                             f"expects {want}; the pairs were made for another base model")
    torch.manual_seed(config.seed)  # LoRA A initialisation
    if config.finetune == "lora":
        transformer.add_adapter(lora_config(config))
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # LoRA weights train in fp32 beside the frozen (bf16) base
    else:
        transformer.to(torch.float32).requires_grad_(True)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()  # the decoder runs with gradients on 512-1024 px crops
    transformer.train()
    student = Student(transformer, embeddings["prompt_embeds"], embeddings["pooled_prompt_embeds"], config.guidance,
                      dtype).to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params, device)
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.max_steps)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    params = [p for p in student.parameters() if p.requires_grad]
    if config.finetune == "lora":
        _register_lora_state_hooks(accelerator, student)
    lpips = None
    if config.weights.needs_lpips:
        from fluxsr_cli.quality.lpips import load_lpips

        lpips = load_lpips(device, cache_dir=config.lpips_cache,
                           elsewhere="set lpips_cache in [distill] to a folder that holds them")
    blocks = parse_blocks(config.adl_blocks, len(transformer.transformer_blocks),
                          len(transformer.single_transformer_blocks))
    return {"student": student, "vae": vae, "optimizer": optimizer, "scheduler": scheduler, "params": params,
            "dataset": dataset, "train_ids": train_ids, "val_ids": val_ids, "embeddings": embeddings,
            "lpips": lpips, "adl_blocks": blocks}


def _optimizer(config: DistillConfig, params: list[torch.nn.Parameter], device: torch.device):
    kwargs = {"lr": config.lr, "betas": tuple(config.adam_betas), "weight_decay": config.weight_decay}
    if not config.use_8bit_adam:
        return torch.optim.AdamW(params, **kwargs)
    if device.type != "cuda":
        raise ConfigError("use_8bit_adam needs a CUDA GPU (bitsandbytes); set distill.use_8bit_adam = false")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit(params, **kwargs)


def _register_lora_state_hooks(accelerator: Any, student: torch.nn.Module) -> None:
    """accelerate checkpoints hold only the LoRA (not 24 GB of frozen base weights)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    transformer = unwrap_student(student).transformer

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            state = get_peft_model_state_dict(transformer)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()},
                      os.path.join(output_dir, LORA_FILE))
        weights.clear()

    def load_hook(models: list, input_dir: str) -> None:
        models.clear()
        state = load_file(os.path.join(input_dir, LORA_FILE))
        result = set_peft_model_state_dict(transformer, state)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"{input_dir}: LoRA keys {result.unexpected_keys[:2]} fit no layer of the model")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _tracker_config(config: DistillConfig) -> dict[str, Any]:
    from fluxsr_cli.configs import to_dict

    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in to_dict(config).items()}


def _write_run_files(config: DistillConfig, run_dir: Path, embeddings: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from fluxsr_cli.atomic import atomic_path
    from fluxsr_cli.configs import save_config

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "distill.toml", SECTION)
    with atomic_path(run_dir / "embeddings.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in embeddings.items()}, str(tmp))
