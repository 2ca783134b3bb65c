"""Small pairs data sets in the format of ``fluxsr pairs`` (data set contract v1) for the trainer's tests.

``make_pairs`` runs the tiny teacher (the tiny base's own transformer, 28 Euler steps from seeded
noise), decodes x_0 = D(z_0), degrades it with the Real-ESRGAN pipeline, and encodes the bicubic
upscale of the LR image: exactly the recipe of docs/method.md section 2, written with the shared code.

The learning proof needs data with something to learn, which a random VAE and a random teacher
cannot give (their x_0 is noise and z_L keeps nothing of z_0). So ``save_photo_base`` trains the
tiny VAE briefly as an autoencoder on real photo crops (``skimage.data``) and saves it beside a
random transformer, and ``make_photo_pairs`` stands in for the teacher: its "samples" are the
latents of photo crops, z_0 = E(crop), with seeded noise eps; the rest is the pairs recipe
(x_0 = D(z_0), x_L = x4 bicubic down, z_L = E(bicubic_up(x_L))).

Until ``fluxsr_cli.train.dataset`` (the pairs helper's reader) exists, ``ensure_reader`` installs a
STAND-IN reader with the contract's API (``PairDataset``, ``load_embeddings``, ``read_manifest``).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch


def make_pairs(root: Path, base: Path, n: int, size: int = 64, seed: int = 0, steps: int = 28,
               guidance: float = 3.5, degradation: str = "realesrgan") -> Path:
    """Write ``n`` pairs of ``size`` px (HQ) into ``root``; returns ``root``.

    ``degradation``: "realesrgan" (the full second-order pipeline) or "bicubic" (plain x4 bicubic
    downscaling, quantised to 8 bits: LR images that still carry what the HR latent holds).
    """
    from fluxsr_cli.degrade.config import DegradeConfig
    from fluxsr_cli.degrade.pipeline import degrade
    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.model.architectures import TINY_TEXT_LENGTH, TINY_TRANSFORMER, random_embeddings
    from fluxsr_cli.model.loading import load_transformer, load_vae
    from fluxsr_cli.model.student import Conditioning, velocity
    from fluxsr_cli.upscale.bicubic import bicubic_upsample

    teacher, vae = load_transformer(base, torch.float32), load_vae(base, torch.float32)
    emb = random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=seed + 99)
    cond = Conditioning(emb["prompt_embeds"], emb["pooled_prompt_embeds"], guidance)
    h = size // 8
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, 16, h, h, generator=g)
    times = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        z = eps.clone()
        for i in range(steps):  # Euler along the teacher's flow, t = 1 (noise) -> 0 (data)
            z = z + (times[i + 1] - times[i]) * velocity(teacher, z, times[i], cond)
        z_0 = z
        hq = vae_lib.decode(vae, z_0)
        hq = (hq * 255).round() / 255  # what hq/*.png holds
        if degradation == "realesrgan":
            lq, params = degrade(hq, DegradeConfig(), torch.Generator().manual_seed(seed + 1))
        else:
            lq, params = bicubic_degrade(hq), [{"kind": "bicubic"}] * n
        z_l = vae_lib.encode(vae, bicubic_upsample(lq, 4))
    teacher_info = {"model": str(base), "revision": None, "steps": steps, "guidance": guidance, "dtype": "fp32"}
    return write_pairs(root, emb, eps, z_0, z_l, hq, lq, params, teacher_info, seed)


def bicubic_degrade(hq: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """x4 bicubic (antialiased) downscaling quantised to 8 bits: [B, 3, H, W] -> [B, 3, H/4, W/4]."""
    lq = torch.nn.functional.interpolate(hq, scale_factor=1 / scale, mode="bicubic", antialias=True)
    return (lq.clamp(0, 1) * 255).round() / 255


def write_pairs(root: Path, embeddings: dict[str, torch.Tensor], eps: torch.Tensor, z_0: torch.Tensor,
                z_l: torch.Tensor, hq: torch.Tensor, lq: torch.Tensor, params: list[dict], teacher: dict,
                seed: int) -> Path:
    """Write a finished data set (contract v1) from batched tensors; returns ``root``."""
    from PIL import Image
    from safetensors.torch import save_file

    root = Path(root)
    for sub in ("items", "hq", "lq"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in embeddings.items()}, str(root / "embeddings.safetensors"))
    height, width = hq.shape[-2:]
    lines = []
    for i in range(eps.shape[0]):
        name = f"{i:06d}"
        save_file({"eps": eps[i].contiguous(), "z_0": z_0[i].contiguous(), "z_l": z_l[i].contiguous()},
                  str(root / "items" / f"{name}.safetensors"))
        for img, sub in ((hq[i], "hq"), (lq[i], "lq")):
            array = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(np.ascontiguousarray(array)).save(root / sub / f"{name}.png")
        lines.append(json.dumps({
            "index": i, "seed": seed, "prompt": "", "latents": f"items/{name}.safetensors",
            "hq": f"hq/{name}.png", "lq": f"lq/{name}.png", "height": int(height), "width": int(width),
            "scale": int(height // lq.shape[-2]), "teacher": teacher, "degradation": params[i],
        }, default=str))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (root / "pairs.toml").write_text("[pairs]\n")
    return root


# -- an informative tiny stack: a VAE trained on photo crops, a teacher stand-in made of photo crops --------

# A slightly larger tiny transformer for the learning proof: the 2 x 16 = 32-wide TINY_TRANSFORMER
# squeezes each 64-wide latent token through 32 channels, which caps what a student can learn.
LEARNING_TRANSFORMER: dict = {
    "patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 32,
    "num_attention_heads": 4, "joint_attention_dim": 32, "pooled_projection_dim": 16, "guidance_embeds": True,
    "axes_dims_rope": [8, 12, 12],
}


def photo(name: str) -> torch.Tensor:
    """An RGB photo of ``skimage.data`` as float32 [3, H, W] in [0, 1]."""
    from skimage import data

    array = getattr(data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float() / 255.0


def photo_crops(photos: list[torch.Tensor], n: int, size: int, generator: torch.Generator,
                columns: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``n`` random ``size`` px crops [n, 3, size, size] of ``photos``, inside the given band of columns.

    ``columns`` (fractions of the width) keeps training and held-out crops apart: crops taken in
    (0, 0.7) and in (0.7, 1) share no pixel.
    """
    crops = []
    for _ in range(n):
        image = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        h, w = image.shape[-2:]
        x0, x1 = int(columns[0] * w), int(columns[1] * w)
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = x0 + int(torch.randint(x1 - x0 - size + 1, (1,), generator=generator))
        crops.append(image[:, y:y + size, x:x + size])
    return torch.stack(crops)


def train_tiny_vae(photos: list[torch.Tensor], steps: int = 600, seed: int = 0, size: int = 32, batch: int = 16,
                   lr: float = 3e-3, columns: tuple[float, float] = (0.0, 1.0)):
    """The tiny AutoencoderKL (TINY_VAE) trained as a plain autoencoder (MSE of D(E(x)), posterior mean).

    Adam with a cosine decay of the learning rate to zero, so that the result depends little on
    where the noisy end of the trajectory happens to stop.

    Its shift and scaling factors are then set, as FLUX's were, so that the normalised latents of
    the photos have mean 0 and standard deviation 1.
    """
    from fluxsr_cli.model.architectures import TINY_VAE, build_vae

    vae = build_vae(TINY_VAE, seed=seed).requires_grad_(True).train()
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        x = photo_crops(photos, batch, size, g, columns) * 2 - 1
        loss = torch.nn.functional.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        raw = vae.encode(photo_crops(photos, 32, 64, g, columns) * 2 - 1).latent_dist.mean
    vae.register_to_config(shift_factor=float(raw.mean()), scaling_factor=float(1.0 / raw.std()))
    return vae


def save_photo_base(root: Path, photos: list[torch.Tensor], seed: int = 0, vae_steps: int = 600,
                    transformer: dict | None = None, columns: tuple[float, float] = (0.0, 1.0),
                    output_scale: float = 1.0, vae=None) -> Path:
    """A tiny base folder (diffusers layout) with a photo-trained VAE and a random transformer.

    ``output_scale`` multiplies the transformer's last projection (``proj_out``): a random
    transformer's velocity is junk of arbitrary size, and scaling it down keeps the untrained
    student's junk from swamping the small latent residuals the student has to learn. ``vae``: an
    already trained VAE (from :func:`train_tiny_vae`) to save instead of training one.
    """
    from fluxsr_cli.model.architectures import build_transformer

    root = Path(root)
    model = build_transformer(transformer or LEARNING_TRANSFORMER, seed=seed)
    model.proj_out.weight.data.mul_(output_scale)
    model.proj_out.bias.data.mul_(output_scale)
    model.save_pretrained(root / "transformer")
    vae = vae or train_tiny_vae(photos, steps=vae_steps, seed=seed + 1, columns=columns)
    vae.save_pretrained(root / "vae")
    (root / "model_index.json").write_text(
        '{"_class_name": "FluxPipeline", "_diffusers_version": "0.32.0", '
        '"transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}\n')
    return root


def mild_degradation():
    """The project's Real-ESRGAN pipeline with reduced ranges: one isotropic Gaussian blur (sigma 3-4 px),
    x4 bicubic down, noise of at most 1 level of 255, JPEG quality 95-100; no random resizes, no sinc."""
    from fluxsr_cli.degrade.config import DegradeConfig, StageConfig

    quiet = {"sinc_prob": 0.0, "resize_probs": (0.0, 0.0, 1.0), "gaussian_noise_prob": 1.0,
             "noise_sigma_range": (0.0, 1.0), "gray_noise_prob": 0.0, "jpeg_range": (95, 100)}
    stage1 = StageConfig(blur_prob=1.0, kernel_kinds=("iso",), kernel_probs=(1.0,), kernel_sizes=(17, 19, 21),
                         sigma_range=(3.0, 4.0), **quiet)
    stage2 = StageConfig(blur_prob=0.0, **quiet)
    return DegradeConfig(stage1=stage1, stage2=stage2, final_sinc_prob=0.0, final_resize_modes=("bicubic",))


def make_photo_pairs(root: Path, base: Path, crops: torch.Tensor, seed: int = 0, degradation=None) -> Path:
    """Pairs whose teacher "samples" are the latents of photo crops [n, 3, H, W]: z_0 = E(crop).

    eps is seeded noise. Then the pairs recipe, as `fluxsr pairs` runs it: x_0 = D(z_0) (8-bit),
    x_L = degrade(x_0) (``degradation``: a DegradeConfig for the project's pipeline, or None for x4
    bicubic down, 8-bit), z_L = E(bicubic_up(x_L)).
    """
    from fluxsr_cli.degrade.pipeline import degrade
    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.model.architectures import random_embeddings
    from fluxsr_cli.model.loading import load_transformer, load_vae
    from fluxsr_cli.upscale.bicubic import bicubic_upsample

    vae, config = load_vae(base, torch.float32), load_transformer(base, torch.float32).config
    with torch.no_grad():
        z_0 = vae_lib.encode(vae, crops)
        hq = (vae_lib.decode(vae, z_0) * 255).round() / 255  # x_0, what hq/*.png holds
        if degradation is None:
            lq, params = bicubic_degrade(hq), [{"kind": "bicubic"}] * len(crops)
        else:
            lq, params = degrade(hq, degradation, torch.Generator().manual_seed(seed + 1))
        z_l = vae_lib.encode(vae, bicubic_upsample(lq, 4))
    eps = torch.randn(z_0.shape, generator=torch.Generator().manual_seed(seed))
    emb = random_embeddings(dict(config), 8, seed=seed + 99)
    teacher = {"model": "photo crops (teacher stand-in)", "revision": None, "steps": 0, "guidance": 0.0,
               "dtype": "fp32"}
    return write_pairs(root, emb, eps, z_0, z_l, hq, lq, params, teacher, seed)


def ensure_reader() -> None:
    """Make ``fluxsr_cli.train.dataset`` importable: the real one, or a stand-in with the contract's API."""
    try:
        importlib.import_module("fluxsr_cli.train.dataset")
        return
    except ImportError:
        pass
    from PIL import Image
    from safetensors.torch import load_file

    def read_manifest(root):
        text = (Path(root) / "manifest.jsonl").read_text().splitlines()
        return sorted((json.loads(line) for line in text if line.strip()), key=lambda r: r["index"])

    def load_embeddings(root):
        return load_file(str(Path(root) / "embeddings.safetensors"))

    class PairDataset(torch.utils.data.Dataset):
        def __init__(self, root):
            self.root = Path(root)
            self.rows = read_manifest(root)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            row = self.rows[i]
            item = load_file(str(self.root / row["latents"]))
            hq = np.asarray(Image.open(self.root / row["hq"]).convert("RGB"), dtype=np.float32) / 255.0
            return {"index": row["index"], **item, "hq": torch.from_numpy(hq).permute(2, 0, 1).contiguous()}

    module = types.ModuleType("fluxsr_cli.train.dataset")
    module.PairDataset, module.load_embeddings, module.read_manifest = PairDataset, load_embeddings, read_manifest
    module.STAND_IN = True
    sys.modules["fluxsr_cli.train.dataset"] = module
