"""Teacher data for FTD (docs/method.md section 2): noise-image pairs generated offline by the frozen teacher.

For every item i of the data set (format in :mod:`fluxsr_cli.train.dataset`)::

    seed_i = derive_seed(root seed, i)                   # CPU generator g_i = Generator().manual_seed(seed_i)
    eps    ~ N(0, I) from g_i, rounded to the run dtype    # [16, H/8, W/8], what the teacher really starts from
    z_0    = FluxPipeline(prompt_i, latents=pack(eps), N steps, guidance, output_type="latent")
    x_0    = D(z_0) on 8-bit levels                        # hq/i.png
    x_L    = degrade(x_0, g_i)                             # lq/i.png (the same generator, after eps)
    z_L    = E(bicubic_up(x_L))                            # the upsampling inference uses

The prompt embeddings (and the student's fixed conditioning) are computed first with the text encoders
alone; those are then freed and only the transformer and VAE are loaded for generation. Every file is
written atomically and an item counts as finished once its manifest line is in its rank's part file
(``parts/manifest-RRRRR.jsonl``), so a killed run restarted skips what is done and gives the same bytes;
its main process first removes the temporaries the killed run left (:func:`fluxsr_cli.atomic.sweep_temporaries`).
Items are split across processes by ``index % world_size``; the main process merges the parts into
``manifest.jsonl``, sorted by index.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.atomic import atomic_write_text, sweep_temporaries
from fluxsr_cli.configs import dumps_toml
from fluxsr_cli.errors import CheckpointError, ConfigError, InputError
from fluxsr_cli.model.hub import DEFAULT_BASE
from fluxsr_cli.model.loading import DTYPES
from fluxsr_cli.model.quantize import check_settings
from fluxsr_cli.processes import AccelerateProcesses, launched
from fluxsr_cli.progress import Notice, ProgressFn, no_notice, no_progress
from fluxsr_cli.train.dataset import append_line, finished_items, item_names, merge_manifest, read_lines

TEACHER_FILES = ["model_index.json", "scheduler/*", "text_encoder/*", "text_encoder_2/*", "tokenizer/*",
                 "tokenizer_2/*", "transformer/*", "vae/*"]
# settings that decide the content of an item: a data set only resumes with the same values
CONTENT_KEYS = ("teacher", "revision", "resolution", "steps", "guidance", "seed", "max_sequence_length",
                "student_prompt", "quantize")
OFFLOADS = ("none", "model", "sequential")  # diffusers' pipeline offloading
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class PairsConfig:
    """The ``[pairs]`` section of ``ftd.toml``. Relative paths are relative to the working folder."""

    teacher: str = DEFAULT_BASE  # Hub repo id or local folder of a FLUX pipeline (diffusers layout)
    revision: str | None = None
    offline: bool = False  # only the local Hugging Face cache
    prompts: Path = Path("prompts.txt")  # one prompt a line, or a JSON list; item i uses prompt i mod count
    num_pairs: int = 2400
    resolution: int = 1024  # square side in pixels, a multiple of 16 and of the degradation scale
    steps: int = 28
    guidance: float = 3.5
    seed: int = 0  # root seed; item i uses derive_seed(seed, i)
    degradation: Path | None = None  # TOML with a [degrade] table; None: Real-ESRGAN's defaults
    output: Path = Path("data/ftd_pairs")
    dtype: str | None = None  # bf16, fp16 or fp32; None: bf16 on GPU, fp32 on CPU
    device: str | None = None  # None: CUDA when present (the process's GPU under accelerate)
    offload: str = "none"  # none, model or sequential CPU offload
    quantize: str = "none"  # the teacher's transformer: none, fp8, fp8-compute or nf4 (fluxsr_cli.model.quantize)
    max_sequence_length: int = 512  # T5 tokens per prompt
    student_prompt: str = ""  # the student's fixed conditioning (embeddings.safetensors)

    def __post_init__(self) -> None:
        if not str(self.teacher).strip():
            raise ConfigError("teacher is empty; give a Hub repo id or a local FLUX pipeline folder")
        if not str(self.prompts).strip() or str(self.prompts) == ".":
            raise ConfigError("prompts is empty; give a text file (one prompt a line) or a JSON list")
        if self.num_pairs < 1:
            raise ConfigError(f"num_pairs = {self.num_pairs} must be at least 1")
        if self.resolution < 16 or self.resolution % 16:
            raise ConfigError(f"resolution = {self.resolution} must be a positive multiple of 16 (e.g. 1024)")
        if self.steps < 1:
            raise ConfigError(f"steps = {self.steps} must be at least 1 (FLUX.1-dev uses 28)")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ConfigError(f"guidance = {self.guidance} must be a finite number >= 0 (FLUX.1-dev uses 3.5)")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed = {self.seed} must be in [0, 2^63 - 1]")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"dtype = {self.dtype!r} must be one of {', '.join(DTYPES)}")
        if self.offload not in OFFLOADS:
            raise ConfigError(f"offload = {self.offload!r} must be one of {', '.join(OFFLOADS)}")
        check_settings(self.quantize, self.offload)
        if not 1 <= self.max_sequence_length <= 512:
            raise ConfigError(f"max_sequence_length = {self.max_sequence_length} must be in 1-512")


@dataclass(frozen=True)
class PairsSummary:
    """What one call of :func:`generate_pairs` did (for this process)."""

    output: Path
    rank: int
    world_size: int
    assigned: int  # items of this process
    skipped: int  # already finished before this run
    generated: int
    in_manifest: int  # items in manifest.jsonl after the merge (0 when this process does not merge)
    merged: bool
    seconds: float
    disk_bytes: int
    removed: int = 0  # temporaries of killed runs removed first (by the main process)

    @property
    def seconds_per_pair(self) -> float:
        return self.seconds / self.generated if self.generated else 0.0


# ------------------------------------------------------------------------------ pure helpers

def derive_seed(root_seed: int, index: int) -> int:
    """The seed of item ``index``: a hash of (root seed, index), so items are independent of the split."""
    digest = hashlib.sha256(f"fluxsr-pairs:{root_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


def draw_eps(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise drawn on the CPU, rounded to the run ``dtype``, returned as float32 (exact)."""
    return torch.randn(shape, generator=generator).to(dtype).float()


def assigned_indices(num_pairs: int, rank: int, world_size: int) -> list[int]:
    """The items of process ``rank`` of ``world_size``: every ``world_size``-th index from ``rank``."""
    return list(range(rank, num_pairs, world_size))


def read_prompts(path: Path) -> list[str]:
    """Prompts from a text file (one a line, blank lines skipped) or a JSON list (strings or {"prompt": ...})."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"prompts = {path}: file not found; give a text file (one prompt a line) or a JSON list") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"prompts = {path}: cannot read it ({e}); give a UTF-8 text or JSON file") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"prompts = {path}: not valid JSON ({e}); fix it or use one prompt a line") from None
        if isinstance(data, dict):
            data = data.get("prompts", data.get("captions"))
        if not isinstance(data, list):
            raise ConfigError(f"prompts = {path}: expected a JSON list of prompts (or {{\"prompts\": [...]}})")
        prompts = []
        for k, entry in enumerate(data):
            if isinstance(entry, dict):
                entry = next((entry[key] for key in ("prompt", "caption", "text") if key in entry), None)
            if not isinstance(entry, str):
                raise ConfigError(f"prompts = {path}: entry {k} is not a string nor has a \"prompt\" key")
            prompts.append(entry.strip())
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError(f"prompts = {path}: holds no prompts; add at least one")
    return prompts


# ------------------------------------------------------------------------------ checks before loading

def _load_degradation(config: PairsConfig):
    from fluxsr_cli.configs import load_config
    from fluxsr_cli.degrade.config import DegradeConfig

    return DegradeConfig() if config.degradation is None else load_config(DegradeConfig, config.degradation, "degrade")


def _record(config: PairsConfig, degradation: Any) -> dict[str, Any]:
    """``pairs.toml``'s content, as it reads back from the file (None is written as "none")."""
    import tomllib

    from fluxsr_cli.configs import to_dict

    return tomllib.loads(dumps_toml({"pairs": to_dict(config), "degrade": to_dict(degradation)}))


def check_inputs(config: PairsConfig) -> tuple[list[str], Any]:
    """Everything that can be checked without a model: prompts, degradation, output folder, resume.

    Returns the prompts and the degradation config; raises one-line errors.
    """
    from fluxsr_cli.configs import read_toml

    prompts = read_prompts(config.prompts)
    degradation = _load_degradation(config)
    if config.resolution % degradation.scale:
        raise ConfigError(f"resolution = {config.resolution} must be a multiple of the degradation scale "
                          f"{degradation.scale}")
    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"output = {out}: is a file; give a folder for the data set")
    record = out / "pairs.toml"
    if record.is_file():
        old = read_toml(record)
        new = _record(config, degradation)
        defaults = _record(PairsConfig(), degradation)["pairs"]  # for settings added since the data set was made
        for key in CONTENT_KEYS:
            made = old.get("pairs", {}).get(key, defaults[key])
            if made != new["pairs"].get(key):
                raise ConfigError(
                    f"{record}: this data set was made with {key} = {made!r}, the config "
                    f"says {new['pairs'].get(key)!r}; resume with the same settings or choose another output"
                )
        if old.get("degrade") != new["degrade"]:
            raise ConfigError(f"{record}: this data set was made with another degradation config; resume with "
                              "the same one or choose another output")
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise InputError(f"output = {out}: folder is not empty and holds no pairs.toml; choose an empty or new folder")
    for index, line in finished_items(out).items():
        if index < config.num_pairs and json.loads(line)["prompt"] != prompts[index % len(prompts)]:
            raise ConfigError(f"prompts = {config.prompts}: prompt {index % len(prompts)} differs from the one "
                              f"item {index} of {out} was made with; restore the file or choose another output")
    return prompts, degradation


# ------------------------------------------------------------------------------ models

def _process(rank: int | None, world_size: int | None) -> tuple[int, int, Any]:
    """(rank, world size, launched processes or None): explicit values, else accelerate's launch variables."""
    if (rank is None) != (world_size is None):
        raise ConfigError("give both rank and world_size, or neither")
    if rank is not None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
        return rank, world_size, None
    if launched():
        procs = AccelerateProcesses()
        return procs.index, procs.count, procs
    return 0, 1, None


def _place(pipe: Any, device: torch.device, offload: str) -> None:
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _from_pretrained(base: Path, dtype: torch.dtype, **components: Any) -> Any:
    from diffusers import FluxPipeline

    try:
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype; the old name works on all we support
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return FluxPipeline.from_pretrained(str(base), torch_dtype=dtype, **components)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{base}: cannot load the FLUX pipeline ({str(e).splitlines()[0]}); the folder is "
                              "incomplete or not a diffusers FLUX pipeline") from None


def encode_prompts(pipe: Any, prompts: list[str], max_sequence_length: int,
                   progress: ProgressFn = no_progress) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Prompt -> (T5 prompt_embeds [1, L, D], CLIP pooled [1, P]) on the CPU, one prompt at a time."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    unique = list(dict.fromkeys(prompts))
    progress("prompts", 0, len(unique))
    for k, prompt in enumerate(unique):
        with torch.inference_mode():
            embeds, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=max_sequence_length)
        out[prompt] = (embeds.cpu(), pooled.cpu())
        progress("prompts", k + 1, len(unique))
    return out


def teacher_latent(pipe: Any, eps: torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                   steps: int, guidance: float) -> torch.Tensor:
    """z_0 of the teacher's N-step sample from noise ``eps`` [1, 16, h, w] -> [1, 16, h, w] fp32 (normalised).

    The pipeline's packed latents live in the normalised space ``(z - shift) * scale`` (it divides by
    the scale and adds the shift before decoding), so unpacking them gives z_0 as the student sees it.
    """
    from fluxsr_cli.model.latents import VAE_FACTOR, pack, unpack

    _, _, h, w = eps.shape
    tokens = pipe(
        prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, height=h * VAE_FACTOR, width=w * VAE_FACTOR,
        num_inference_steps=steps, guidance_scale=guidance, latents=pack(eps).to(prompt_embeds.dtype),
        output_type="latent", return_dict=False,
    )[0]  # [1, h/2 * w/2, 64]
    return unpack(tokens.float().cpu(), h, w)


# ------------------------------------------------------------------------------ writing

def _save_png(path: Path, image: torch.Tensor) -> None:
    """[1, 3, H, W] uint8 -> PNG, atomically."""
    from PIL import Image

    from fluxsr_cli.atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image[0].permute(1, 2, 0).numpy()).save(tmp, format="PNG")


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from fluxsr_cli.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def make_item(index: int, seed: int, prompt: str, embeds: tuple[torch.Tensor, torch.Tensor], pipe: Any,
              vae: Any, degradation: Any, config: PairsConfig, dtype: torch.dtype, device: torch.device,
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, Any]]:
    """One pair: (latents {eps, z_0, z_l} [16, h, w], hq [1, 3, H, W] uint8, lq uint8, manifest record)."""
    from fluxsr_cli.degrade.ops import to_uint8
    from fluxsr_cli.degrade.pipeline import degrade
    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.upscale.bicubic import bicubic_upsample

    side = config.resolution // 8
    channels = pipe.transformer.config.in_channels // 4
    g = torch.Generator().manual_seed(seed)
    eps = draw_eps(g, (1, channels, side, side), dtype)  # [1, 16, h, w]
    with torch.inference_mode():
        z_0 = teacher_latent(pipe, eps, embeds[0].to(device, dtype), embeds[1].to(device, dtype),
                             config.steps, config.guidance)
        hq = to_uint8(vae_lib.decode(vae, z_0.to(device)).cpu())  # [1, 3, H, W]
        lq_float, params = degrade(hq.float() / 255.0, degradation, g)  # on 8-bit levels
        lq = to_uint8(lq_float)
        z_l = vae_lib.encode(vae, bicubic_upsample(lq.float() / 255.0, degradation.scale)).cpu()
    names = item_names(index)
    record = {
        "index": index, "seed": seed, "prompt": prompt, **names,
        "height": config.resolution, "width": config.resolution, "scale": degradation.scale,
        "teacher": {"model": config.teacher, "revision": config.revision, "steps": config.steps,
                    "guidance": config.guidance, "dtype": next(k for k, v in DTYPES.items() if v == dtype),
                    "quantize": config.quantize},
        "degradation": params[0],
    }
    return {"eps": eps[0], "z_0": z_0[0], "z_l": z_l[0]}, hq, lq, record


# ------------------------------------------------------------------------------ the command

def generate_pairs(config: PairsConfig, progress: ProgressFn = no_progress, notice: Notice = no_notice,
                   rank: int | None = None, world_size: int | None = None) -> PairsSummary:
    """Generate (or finish) the pairs data set of ``config`` for this process; see the module docstring."""
    start, started = time.perf_counter(), time.time()
    prompts, degradation = check_inputs(config)  # before any model is loaded
    rank, world_size, procs = _process(rank, world_size)
    root = Path(config.output)
    removed = len(sweep_temporaries(root, started=started)) if rank == 0 else 0
    if procs is not None:
        procs.wait()  # the killed runs' temporaries are gone before any process writes
    done = finished_items(root)
    mine = assigned_indices(config.num_pairs, rank, world_size)
    todo = [i for i in mine if i not in done]
    need_embeddings = not (root / "embeddings.safetensors").is_file()
    if done:
        notice(f"resuming {root}: {len(done)} items finished, {len(todo)} of this process's {len(mine)} to go")
    record = dumps_toml(_record(config, degradation))
    if not (root / "pairs.toml").is_file():  # first, so a folder with items always has it
        atomic_write_text(root / "pairs.toml", record)
    for folder in ("items", "hq", "lq", "parts"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    part = root / "parts" / f"manifest-{rank:05d}.jsonl"
    lines, torn = read_lines(part)
    if torn:  # a killed run left half a line: keep the complete ones
        atomic_write_text(part, "".join(line + "\n" for line in lines))

    generated = 0
    if todo or need_embeddings:
        generated = _generate(config, prompts, degradation, todo, need_embeddings, root, part, done, procs,
                              progress, notice)
    merged, count = False, 0
    if procs is not None:
        procs.wait()
    if rank == 0 or procs is None:
        count, merged = merge_manifest(root), True
        atomic_write_text(root / "pairs.toml", record)  # after success: the settings of the whole data set
    return PairsSummary(root, rank, world_size, len(mine), len(mine) - len(todo), generated, count, merged,
                        time.perf_counter() - start,
                        sum(p.stat().st_size for p in root.rglob("*") if p.is_file()), removed)


def _generate(config: PairsConfig, prompts: list[str], degradation: Any, todo: list[int], need_embeddings: bool,
              root: Path, part: Path, done: dict[int, str], procs: Any, progress: ProgressFn,
              notice: Notice) -> int:
    from fluxsr_cli.model.base import Base
    from fluxsr_cli.model.loading import compute_dtype, load_transformer, load_vae, pick_device
    from fluxsr_cli.model.quantize import check_mode, load_quantized_transformer

    teacher = Base(str(config.teacher), config.revision, config.offline)
    if procs is not None:  # under accelerate / torchrun: this process's own device
        device = procs.state.device
    else:  # decided from the config alone: a machine that cannot run the teacher says so before the download
        device = pick_device(config.device, teacher.transformer_config(notice), str(config.teacher))
    dtype = compute_dtype(config.dtype, device)
    if config.offload != "none" and device.type == "cpu":
        raise ConfigError(f"offload = {config.offload} needs a GPU; use offload = none on the CPU")
    check_mode(config.quantize, device)
    base = teacher.folder(TEACHER_FILES, notice)
    made = {json.loads(line)["teacher"]["dtype"] for line in done.values()}
    name = next(k for k, v in DTYPES.items() if v == dtype)
    if made - {name}:
        raise ConfigError(f"{root}: items were made in {', '.join(sorted(made))} but this run would use {name} "
                          f"on {device.type}; set dtype = {sorted(made)[0]} to resume")

    # 1. text encoders alone: every prompt this process needs, and the student's conditioning; then freed
    item_prompts = {i: prompts[i % len(prompts)] for i in todo}
    wanted = list(item_prompts.values()) + ([config.student_prompt] if need_embeddings else [])
    text_pipe = _from_pretrained(base, dtype, transformer=None, vae=None)
    _place(text_pipe, device, config.offload)
    embeds = encode_prompts(text_pipe, wanted, config.max_sequence_length, progress)
    del text_pipe
    _free_memory()
    if need_embeddings:
        prompt_embeds, pooled = embeds[config.student_prompt]
        _save_tensors(root / "embeddings.safetensors",
                      {"prompt_embeds": prompt_embeds.float(), "pooled_prompt_embeds": pooled.float()})
    if not todo:
        return 0

    # 2. transformer (in a pipeline without text encoders) + VAE
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    if config.quantize != "none":  # quantized once onto the device (and kept in the cache for the next run)
        transformer, _ = load_quantized_transformer(base, None, config.quantize, dtype, device, notice=notice)
    else:
        transformer = load_transformer(base, dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(base), subfolder="scheduler"),
                        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    if config.quantize == "none":
        _place(pipe, device, config.offload)
    vae = load_vae(base, dtype).to(device)

    # 3. one item at a time: files first (atomic), then the manifest line that marks it finished
    progress("pairs", 0, len(todo))
    for k, index in enumerate(todo):
        seed = derive_seed(config.seed, index)
        prompt = item_prompts[index]
        latents, hq, lq, record = make_item(index, seed, prompt, embeds[prompt], pipe, vae, degradation,
                                            config, dtype, device)
        _save_tensors(root / record["latents"], latents)
        _save_png(root / record["hq"], hq)
        _save_png(root / record["lq"], lq)
        append_line(part, json.dumps(record, ensure_ascii=False))
        progress("pairs", k + 1, len(todo))
    return len(todo)
