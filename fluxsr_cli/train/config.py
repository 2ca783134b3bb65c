"""The ``[distill]`` settings of ``configs/ftd.toml``: every *unknown* of the paper is a setting.

Which layers the LoRA adapts, the loss weights, T_L, the guidance value, the ADL blocks, the
optimizer and the schedule; validated on construction (:class:`~fluxsr_cli.errors.ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fluxsr_cli.errors import ConfigError
from fluxsr_cli.model.hub import DEFAULT_BASE
from fluxsr_cli.train.losses import LossWeights

SECTION = "distill"
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
MLP_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")


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
