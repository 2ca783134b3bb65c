"""Flow Trajectory Distillation training (``fluxsr distill``): the loop, its checkpoints and export.

One training step (METHOD.md sections 3-5), for a micro-batch of pairs (eps, z_0, z_L, x_0):

    t ~ U[T_L, 1];  z_t = noise -> LR point                       (losses.ftd_point)
    v_t, v_L = v_theta([z_t, z_L], [t, T_L])                      (one batched transformer pass)
    L_FTD   = || (u - T_L v_t) / (1 - T_L) - u^L ||^2             (losses.ftd_loss)
    z_hat_0 = z_L - T_L v_L;  x_hat_H = D(z_hat_0)                (decoder frozen, with gradients)
    L = lambda_ftd L_FTD + lambda_rec (MSE + lambda_tv TV-LPIPS) + lambda_adl ADL(features of v_L)

accelerate handles devices, mixed precision, DDP/FSDP, gradient accumulation, trackers and the
training state. The data order, the crops and the flow times are drawn from generators seeded by
(seed, micro-step, process), so a resumed run continues exactly where the killed one stopped.
Run folder: ``distill.toml``, ``embeddings.safetensors``, ``checkpoints/step-NNNNNNN/``, ``logs/``,
``validation/step-NNNNNNN.png`` and ``final/`` (the exported fluxsr checkpoint).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fluxsr_cli.model.checkpoint import DEFAULT_BASE
from fluxsr_cli.errors import CheckpointError, ConfigError, InputError
from fluxsr_cli.train.losses import LossWeights
from fluxsr_cli.progress import ProgressFn, no_progress

SECTION = "distill"
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
MLP_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")
LORA_FILE = "lora.safetensors"
STATE_FILE = "trainer_state.json"

Notice = Callable[[str], None]


@dataclass(frozen=True)
class DistillConfig:
    """The ``[distill]`` section of ``configs/ftd.toml``; every *unknown* of the paper is a setting."""

    data: Path = Path("data/pairs")  # a folder written by `fluxsr pairs`
    output_dir: Path = Path("runs/ftd")
    base_model: str = DEFAULT_BASE  # Hub repo id or local folder with transformer/ and vae/
    base_revision: str | None = None
    offline: bool = False
    t_l: float = 0.25
    guidance: float = 1.0
    finetune: Literal["lora", "full"] = "lora"  # full: every transformer weight (use the FSDP config)
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_targets: tuple[str, ...] = ATTENTION_TARGETS + MLP_TARGETS
    lambda_ftd: float = 1.0
    lambda_rec: float = 1.0
    lambda_tv: float = 0.5
    lambda_adl: float = 0.01
    tv_gamma: float = 0.5
    adl_blocks: tuple[str, ...] = ("double:-1", "single:-1")  # "double:I" / "single:I", negative from the end
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0: no clipping
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit (CUDA only)
    batch_size: int = 1  # per process, per micro-step
    gradient_accumulation: int = 1
    max_steps: int = 10_000  # optimizer steps
    crop_size: int = 512  # px, a multiple of 16; 0 = whole images
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"  # on the CPU always "no"
    base_dtype: Literal["auto", "bf16", "fp32"] = "auto"  # frozen weights; auto = bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = True
    seed: int = 0
    checkpoint_every: int = 500
    keep_last: int = 3
    validate_every: int = 500  # 0: never
    val_count: int = 4  # the last N pairs are held out for validation
    log_every: int = 10
    trackers: tuple[str, ...] = ("tensorboard",)
    num_workers: int = 2
    lpips_cache: Path | None = None  # folder with vgg16-397923af.pth and lpips_v0.1_vgg.pth
    cpu: bool = False  # force the CPU even when a GPU is present
    export_on_finish: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.t_l < 1.0:
            raise ConfigError(f"t_l must lie in (0, 1), got {self.t_l}")
        if self.finetune == "lora" and (self.lora_rank < 1 or not self.lora_targets):
            raise ConfigError("lora_rank must be >= 1 and lora_targets non-empty (or set finetune = \"full\")")
        if self.crop_size < 0 or self.crop_size % 16:
            raise ConfigError(f"crop_size must be 0 or a multiple of 16 px, got {self.crop_size}")
        for name in ("batch_size", "gradient_accumulation", "max_steps", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "validate_every", "val_count", "num_workers", "max_grad_norm", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.validate_every and not self.val_count:
            raise ConfigError("validate_every > 0 needs val_count >= 1 held-out pairs")
        _ = self.weights  # validates the loss weights
        for tracker in self.trackers:
            if tracker not in ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"):
                raise ConfigError(f"trackers: {tracker!r} is not a tracker accelerate knows")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(ftd=self.lambda_ftd, rec=self.lambda_rec, tv=self.lambda_tv, adl=self.lambda_adl,
                           gamma=self.tv_gamma)


def load_distill_config(path: str | Path | None, overrides: list[str] | None = None) -> DistillConfig:
    """``[distill]`` of a TOML file (``None``: the defaults), with ``key=value`` overrides."""
    from fluxsr_cli.configs import load_config

    return load_config(DistillConfig, path, SECTION, overrides)


def lora_config(config: DistillConfig):
    """The peft ``LoraConfig`` of the student (B = 0 at the start: the untrained student is the base)."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=list(config.lora_targets),
                      init_lora_weights=True, lora_dropout=0.0)


@dataclass
class DistillResult:
    run_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per optimizer step
    validation: list[dict[str, float]] = field(default_factory=list)
    exported: Path | None = None
    student: Student | None = None  # the trained student (unwrapped), for evaluation in the same process


class Student(torch.nn.Module):
    """v_theta(z, t) with the fixed conditioning; the module accelerate wraps (DDP/FSDP)."""

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                 guidance: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.transformer = transformer
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)  # [1, L, D]
        self.register_buffer("pooled_prompt_embeds", pooled, persistent=False)  # [1, P]
        self.guidance = guidance
        self.dtype = dtype

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from fluxsr_cli.model.student import Conditioning, velocity

        cond = Conditioning(self.prompt_embeds, self.pooled_prompt_embeds, self.guidance)
        return velocity(self.transformer, z, t, cond, dtype=self.dtype).float()  # [B, 16, h, w]


# --------------------------------------------------------------------------------------------
# One training step: the algorithm, on one screen
# --------------------------------------------------------------------------------------------

def training_step(student: torch.nn.Module, vae: torch.nn.Module, batch: dict[str, torch.Tensor], t_l: float,
                  weights: LossWeights, generator: torch.Generator, lpips: torch.nn.Module | None = None,
                  adl_blocks: list[tuple[str, int]] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch and its named terms (detached), per the module docstring."""
    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.train.adl import FeatureCapture
    from fluxsr_cli.model.flows import one_step
    from fluxsr_cli.train.losses import adl_loss, ftd_loss, ftd_point, reconstruction_loss, total_loss

    eps, z_0, z_l = batch["eps"], batch["z_0"], batch["z_l"]  # [B, 16, h, w]
    b = eps.shape[0]
    z_t, t = ftd_point(eps, z_l, t_l, generator)
    need_one_step = weights.rec > 0 or weights.adl > 0
    z_in, t_in = (torch.cat([z_t, z_l]), torch.cat([t, t.new_full((b,), t_l)])) if need_one_step else (z_t, t)
    blocks = adl_blocks if weights.adl > 0 else []
    inner = _inner(student)
    with FeatureCapture(inner.transformer, blocks, inner.prompt_embeds.shape[1]) as capture:
        v = student(z_in, t_in)  # [B or 2B, 16, h, w]
    terms = {"ftd": ftd_loss(v[:b], eps, z_0, z_l, t_l)}
    if weights.adl > 0:
        terms["adl"] = adl_loss([f[b:] for f in capture.take()])  # image tokens of the one-step pass
    if weights.rec > 0:
        z_hat_0 = one_step(z_l, v[b:], t_l)  # z_L - T_L v_theta(z_L, T_L)
        x_hat = vae_lib.decode(vae, z_hat_0)  # [B, 3, H, W], gradients flow through the frozen decoder
        terms.update(reconstruction_loss(x_hat, batch["hq"], lpips, weights))
    loss = total_loss(terms, weights)
    return loss, {k: v.detach() for k, v in terms.items()}


def _inner(model: torch.nn.Module) -> Student:
    while not isinstance(model, Student) and hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


# --------------------------------------------------------------------------------------------
# Data: a stateless, resumable order
# --------------------------------------------------------------------------------------------

def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-step on one process (crops, flow times)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 4099 + rank)


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist())


def batch_indices(n: int, batch: int, micro_step: int, rank: int, world: int, seed: int) -> list[int]:
    """Positions (into the training pairs) of one process's micro-batch: epochs of fresh permutations."""
    start = (micro_step * world + rank) * batch
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(start, start + batch)]


def random_crop(item: dict[str, torch.Tensor], crop: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The same random ``crop`` px window of the latents [16, h, w] and image [3, H, W] (16 px grid)."""
    h, w = item["z_0"].shape[-2:]
    size = crop // 8
    if crop == 0 or (size >= h and size >= w):
        return item
    ch, cw = min(size, h), min(size, w)
    oy = 2 * int(torch.randint(0, (h - ch) // 2 + 1, (1,), generator=generator))  # even latent offsets
    ox = 2 * int(torch.randint(0, (w - cw) // 2 + 1, (1,), generator=generator))
    out = {k: item[k][:, oy:oy + ch, ox:ox + cw] for k in ("eps", "z_0", "z_l")}
    out["hq"] = item["hq"][:, 8 * oy:8 * (oy + ch), 8 * ox:8 * (ox + cw)]
    return out


def collate(items: list[dict[str, torch.Tensor]], where: Path) -> dict[str, torch.Tensor]:
    shapes = {tuple(i["z_0"].shape) for i in items}
    if len(shapes) > 1:
        raise InputError(f"{where}: pairs of different sizes {sorted(shapes)} in one batch; set crop_size "
                         "(distill.crop_size) to a size all of them reach")
    return {k: torch.stack([i[k] for i in items]) for k in ("eps", "z_0", "z_l", "hq")}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def distill(config: DistillConfig, resume: str | None = None, progress: ProgressFn = no_progress,
            notice: Notice = lambda message: None) -> DistillResult:
    """Train the one-step student on ``config.data``; returns the history (and the export, if asked).

    ``resume``: ``"latest"`` (the newest checkpoint of ``config.output_dir``; none: start fresh) or a
    checkpoint folder. A fresh start refuses a run folder that already holds checkpoints.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    run_dir = Path(config.output_dir)
    start_from = _resume_point(run_dir, resume, notice)
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
    result = DistillResult(run_dir, step)
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
            val = validate(_inner(student), vae, dataset, val_ids, config.t_l, run_dir / "validation" / f"step-{step:07d}.png",
                           write=accelerator.is_main_process)
            result.validation.append({"step": step, **val})
            if config.trackers:
                accelerator.log({("val/" + k): v for k, v in val.items()}, step=step)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            save_training_state(accelerator, run_dir, step, config.keep_last)
        progress("steps", step, config.max_steps)
    result.step = step
    result.student = _inner(accelerator.unwrap_model(student))
    accelerator.wait_for_everyone()
    if config.export_on_finish and accelerator.is_main_process:
        result.exported = export_checkpoint(run_dir, run_dir / "final", overwrite=True)
    accelerator.end_training()
    return result


def _setup(config: DistillConfig, accelerator: Any, run_dir: Path, notice: Notice) -> dict[str, Any]:
    """Data, models (frozen base + trainable LoRA), optimizer and schedule, prepared by accelerate."""
    from diffusers.optimization import get_scheduler

    from fluxsr_cli.train.adl import parse_blocks
    from fluxsr_cli.model.checkpoint import BASE_FILES, FLUX_LICENCE_NOTE, load_transformer, load_vae, resolve
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

        lpips = load_lpips(device, cache_dir=config.lpips_cache)
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

    transformer = _inner(student).transformer

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


# --------------------------------------------------------------------------------------------
# Checkpoints: atomic, last K kept, resumable
# --------------------------------------------------------------------------------------------

def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints ``step-NNNNNNN`` of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def _resume_point(run_dir: Path, resume: str | None, notice: Notice) -> Path | None:
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
    """accelerate state of ``step`` written to a temporary folder and renamed into place; old ones pruned."""
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------
# Validation and export
# --------------------------------------------------------------------------------------------

def latent_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / sqrt(numel): the root-mean-square latent error."""
    return float((a.float() - b.float()).square().mean().sqrt())


@torch.no_grad()
def one_step_errors(student: Student, items: list[dict[str, torch.Tensor]], t_l: float) -> dict[str, float]:
    """Mean RMS error of the one-step z_hat_0 and of the identity z_L against z_0 over ``items``."""
    from fluxsr_cli.model.flows import one_step

    device = next(student.parameters()).device
    err, ident = [], []
    for item in items:
        z_l, z_0 = item["z_l"][None].to(device), item["z_0"][None].to(device)
        z_hat = one_step(z_l, student(z_l, torch.full((1,), t_l, device=device)), t_l)
        err.append(latent_error(z_hat, z_0))
        ident.append(latent_error(z_l, z_0))
    return {"one_step_error": sum(err) / len(err), "identity_error": sum(ident) / len(ident)}


@torch.no_grad()
def validate(student: Student, vae: torch.nn.Module, dataset: Any, val_ids: list[int], t_l: float, grid: Path,
             write: bool = True) -> dict[str, float]:
    """One-step restore of the held-out pairs: latent errors, and a grid PNG (rows: LR-up | output | x_0)."""
    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.model.flows import one_step

    was_training = student.training
    student.eval()
    items = [dataset[i] for i in val_ids]
    errors = one_step_errors(student, items, t_l)
    if write:
        device = next(student.parameters()).device
        rows = []
        for item in items:
            z_l = item["z_l"][None].to(device)
            z_hat = one_step(z_l, student(z_l, torch.full((1,), t_l, device=device)), t_l)
            pics = [vae_lib.decode(vae, z_l), vae_lib.decode(vae, z_hat), item["hq"][None].to(device).float()]
            rows.append(torch.cat([p.cpu() for p in pics], dim=-1))  # [1, 3, H, 3W]
        _save_grid(torch.cat(rows, dim=-2)[0], grid)
    student.train(was_training)
    return errors


def _save_grid(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from fluxsr_cli.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)


def export_checkpoint(run_dir: Path, out: Path, checkpoint: Path | None = None, overwrite: bool = False) -> Path:
    """Write the fluxsr checkpoint format (``fluxsr upscale --model OUT``) from a run's latest (or given) state."""
    from peft import get_peft_model_state_dict  # noqa: F401  (peft must be importable to load it back)

    from fluxsr_cli.model.checkpoint import CheckpointInfo, load_safetensors, save_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "distill.toml").is_file():
        raise InputError(f"{run_dir}: not a distill run folder (no distill.toml)")
    config = load_distill_config(run_dir / "distill.toml")
    found = list_checkpoints(run_dir)
    state = Path(checkpoint) if checkpoint else (found[-1] if found else None)
    if state is None:
        raise InputError(f"{run_dir}: holds no finished checkpoint yet; train at least checkpoint_every steps")
    step = json.loads((state / STATE_FILE).read_text())["step"]
    embeddings = load_safetensors(run_dir / "embeddings.safetensors")
    info = CheckpointInfo(base_model=str(config.base_model), base_revision=config.base_revision, t_l=config.t_l,
                          guidance=config.guidance,
                          lora_rank=config.lora_rank if config.finetune == "lora" else None,
                          lora_alpha=config.lora_alpha if config.finetune == "lora" else None,
                          extra={"trained_steps": step, "data": str(config.data), "finetune": config.finetune})
    if config.finetune == "lora":
        lora = load_safetensors(state / LORA_FILE)
        meta = lora_config(config).to_dict()
        meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}
        return save_checkpoint(Path(out), info, embeddings, lora_state_dict=lora, lora_config=meta,
                               overwrite=overwrite)
    transformer = _full_transformer(config, state)
    return save_checkpoint(Path(out), info, embeddings, transformer=transformer, overwrite=overwrite)


def _full_transformer(config: DistillConfig, state: Path):
    """The fully fine-tuned transformer from an accelerate state (unsharded model weights)."""
    from fluxsr_cli.model.checkpoint import BASE_FILES, load_safetensors, load_transformer, resolve

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
