"""LPIPS with the real pretrained weights, TV-LPIPS, and how the weights are resolved.

Values pinned from an independent implementation are in ``test_lpips_reference.py``.
"""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from skimage.transform import resize

from fluxsr_cli.errors import CheckpointError, InputError
from fluxsr_cli.quality.lpips import (
    LPIPS,
    LPIPS_HEADS_FILE,
    VGG16_FILE,
    WEIGHTS,
    load_lpips,
    load_lpips_nets,
    tv_lpips,
    tv_map,
)
from fluxsr_cli.quality.weights import WEIGHTS_DIR_ENV
from tests.lpips_weights import lpips_cache

SIZE = 64


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    torch.manual_seed(0)
    return load_lpips(cache_dir=lpips_cache())


def _photo(name: str) -> torch.Tensor:
    img = resize(getattr(data, name)(), (SIZE, SIZE), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(img).permute(2, 0, 1)[None]  # [1, 3, H, W] in [0, 1]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.cat([_photo("astronaut"), _photo("coffee"), _photo("chelsea")])


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _blurred(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="reflect"), k, stride=1)


def test_identical_images_score_zero(lpips, photos):
    d = lpips(photos, photos.clone())
    assert d.shape == (3,)
    assert d.abs().max().item() < 1e-6


def test_grows_with_noise(lpips, photos):
    scores = torch.stack([lpips(photos, _noisy(photos, s)) for s in (0.02, 0.05, 0.1, 0.2)])  # [4, 3]
    assert (scores[0] > 0.01).all()
    assert (scores.diff(dim=0) > 0).all(), scores


def test_grows_with_blur(lpips, photos):
    scores = torch.stack([lpips(photos, _blurred(photos, k)) for k in (3, 5, 9)])
    assert (scores[0] > 0.01).all()
    assert (scores.diff(dim=0) > 0).all(), scores


def test_pretrained_weights_rank_photos_sensibly(lpips, photos):
    # a lightly noisy copy is closer to its photo than a different photo is
    near = lpips(photos, _noisy(photos, 0.03))
    far = lpips(photos, photos.roll(1, dims=0))
    assert (near < far).all() and (far > 0.3).all(), (near, far)


def test_batch_rows_are_independent(lpips, photos):
    b = _noisy(photos, 0.1)
    batched = lpips(photos, b)
    single = torch.cat([lpips(photos[i : i + 1], b[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)


def test_tv_map_is_the_scaled_absolute_gradient():
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    t = tv_map(x).numpy()
    xn = x.numpy()
    d_h = np.zeros_like(xn)
    d_w = np.zeros_like(xn)
    d_h[..., :-1, :] = np.abs(np.diff(xn, axis=-2))
    d_w[..., :, :-1] = np.abs(np.diff(xn, axis=-1))
    np.testing.assert_allclose(t, (d_h + d_w) / 2, atol=1e-7)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2
    tv = tv_map(checker.float()[None, None])
    assert tv[0, 0, :-1, :-1].min() == 1 and tv.max() == 1  # the largest TV fills the [0, 1] range


def test_tv_lpips_adds_the_tv_term(lpips, photos):
    b = _blurred(photos, 5)
    plain = lpips(photos, b)
    tv_term = lpips(tv_map(photos), tv_map(b))
    torch.testing.assert_close(tv_lpips(lpips, photos, b, gamma=0.7), plain + 0.7 * tv_term)
    torch.testing.assert_close(tv_lpips(lpips, photos, b, gamma=0.0), plain)
    assert (tv_term > 0.01).all()
    assert tv_lpips(lpips, photos, photos).abs().max() < 1e-6


def test_gradients_reach_the_input_not_the_frozen_net(lpips, photos):
    a = _noisy(photos[:1], 0.1).requires_grad_(True)
    tv_lpips(lpips, a, photos[:1]).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())
    assert not lpips.training


def test_torchvision_and_lpips_key_layout_loads():
    src = LPIPS()
    vgg = {f"features.{k}": v for k, v in src.net.features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(1)  # torchvision's classifier keys are ignored
    heads = {f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(src.lins)}
    dst = LPIPS()
    dst.load_weights(vgg, heads)
    x, y = torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(dst(x, y), src(x, y))
    with pytest.raises(CheckpointError, match="lin4"):
        dst.load_weights(vgg, {k: v for k, v in heads.items() if "lin4" not in k})


def test_offline_without_cache_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=VGG16_FILE) as e:
        load_lpips(cache_dir=tmp_path)
    assert "\n" not in str(e.value)


def test_offline_names_every_missing_file_of_every_net_in_one_error(tmp_path, monkeypatch):
    (tmp_path / VGG16_FILE).write_bytes(b"present")  # only this one is there
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        load_lpips_nets(("alex", "vgg"), cache_dir=tmp_path)
    message = str(e.value)
    missing = [f for n in ("alex", "vgg") for f in WEIGHTS[n] if f.name != VGG16_FILE]
    assert len(missing) == 3 and "3 file(s)" in message and str(tmp_path) in message
    for f in missing:
        assert f"{f.url} as {f.name}" in message
    assert VGG16_FILE not in message and "\n" not in message


def test_weights_dir_comes_from_the_environment(tmp_path, monkeypatch):
    src = lpips_cache()
    for files in WEIGHTS.values():
        for f in files:
            (tmp_path / f.name).symlink_to(src / f.name)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    models = load_lpips_nets(("alex", "vgg"))
    assert set(models) == {"alex", "vgg"} and models["alex"].net_name == "alex"
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="empty"):
        load_lpips(net="alex")


def test_failed_download_is_a_checkpoint_error(tmp_path, monkeypatch):
    def refuse(url, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.delenv("FLUXSR_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(CheckpointError, match="no route to host"):
        load_lpips(cache_dir=tmp_path)
    with pytest.raises(CheckpointError) as e:  # every file that failed, in one message
        load_lpips_nets(("alex", "vgg"), cache_dir=tmp_path)
    assert "4 file(s)" in str(e.value) and "\n" not in str(e.value)
    for files in WEIGHTS.values():
        for f in files:
            assert f"{f.url} as {f.name}" in str(e.value)


def test_cached_files_are_used_without_network(tmp_path, monkeypatch):
    src = lpips_cache()
    for name in (VGG16_FILE, LPIPS_HEADS_FILE):
        (tmp_path / name).symlink_to(src / name)
    monkeypatch.setenv("FLUXSR_OFFLINE", "1")
    assert isinstance(load_lpips(cache_dir=tmp_path), LPIPS)


def test_alexnet_needs_31_px(tmp_path):
    alex = LPIPS("alex")  # random weights: only the geometry matters here
    assert alex(torch.rand(1, 3, 31, 40), torch.rand(1, 3, 31, 40)).shape == (1,)
    with pytest.raises(InputError, match="31x31"):
        alex(torch.rand(1, 3, 30, 40), torch.rand(1, 3, 30, 40))
    with pytest.raises(InputError, match="backbone"):
        LPIPS("squeeze")


def test_bad_inputs_raise_input_error(lpips):
    with pytest.raises(InputError, match="16x16"):
        lpips(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(InputError, match="one shape"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 16))
