"""Small pairs data sets in the format of ``fluxsr pairs`` (data set contract v1) for the trainer's tests.

``make_pairs`` runs the tiny teacher (the tiny base's own transformer, 28 Euler steps from seeded
noise), decodes x_0 = D(z_0), degrades it with the Real-ESRGAN pipeline, and encodes the bicubic
upscale of the LR image: exactly the recipe of METHOD.md section 2, written with the shared code.

Until ``fluxsr_cli.dataset`` (the pairs helper's reader) exists, ``ensure_reader`` installs a
STAND-IN reader with the contract's API (``PairDataset``, ``load_embeddings``, ``read_manifest``).
"""

from __future__ import annotations

import importlib
import json
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
    from PIL import Image
    from safetensors.torch import save_file

    from fluxsr_cli import vae as vae_lib
    from fluxsr_cli.architectures import TINY_TEXT_LENGTH, TINY_TRANSFORMER, random_embeddings
    from fluxsr_cli.checkpoint import load_transformer, load_vae
    from fluxsr_cli.degrade.config import DegradeConfig
    from fluxsr_cli.degrade.pipeline import degrade
    from fluxsr_cli.restore import bicubic_upsample
    from fluxsr_cli.student import Conditioning, velocity

    root = Path(root)
    for sub in ("items", "hq", "lq"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    teacher, vae = load_transformer(base, torch.float32), load_vae(base, torch.float32)
    emb = random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=seed + 99)
    save_file(emb, str(root / "embeddings.safetensors"))
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
            lq = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="bicubic", antialias=True)
            lq, params = (lq.clamp(0, 1) * 255).round() / 255, [{"kind": "bicubic"}] * n
        z_l = vae_lib.encode(vae, bicubic_upsample(lq, 4))
    lines = []
    for i in range(n):
        name = f"{i:06d}"
        save_file({"eps": eps[i].contiguous(), "z_0": z_0[i].contiguous(), "z_l": z_l[i].contiguous()},
                  str(root / "items" / f"{name}.safetensors"))
        for img, sub in ((hq[i], "hq"), (lq[i], "lq")):
            array = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(np.ascontiguousarray(array)).save(root / sub / f"{name}.png")
        lines.append(json.dumps({
            "index": i, "seed": seed, "prompt": "", "latents": f"items/{name}.safetensors",
            "hq": f"hq/{name}.png", "lq": f"lq/{name}.png", "height": size, "width": size, "scale": 4,
            "teacher": {"model": str(base), "revision": None, "steps": steps, "guidance": guidance,
                        "dtype": "fp32"},
            "degradation": params[i],
        }, default=str))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (root / "pairs.toml").write_text("[pairs]\n")
    return root


def ensure_reader() -> None:
    """Make ``fluxsr_cli.dataset`` importable: the real one, or a stand-in with the contract's API."""
    try:
        importlib.import_module("fluxsr_cli.dataset")
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

    module = types.ModuleType("fluxsr_cli.dataset")
    module.PairDataset, module.load_embeddings, module.read_manifest = PairDataset, load_embeddings, read_manifest
    module.STAND_IN = True
    sys.modules["fluxsr_cli.dataset"] = module
