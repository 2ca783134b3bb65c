"""`fluxsr download`'s plan and download: against a local Hub cache offline, and a fake Hub online.

Expected file lists come from huggingface_hub itself (``snapshot_download`` with the patterns
``fluxsr upscale`` uses, and the folders the fake Hub serves); the gated refusal must read exactly as
``resolve`` (the path ``fluxsr upscale`` takes) words it for the same server answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fluxsr_cli.errors import CheckpointError, ResourceError
from fluxsr_cli.model import download as dl
from fluxsr_cli.model.checkpoint import CHECKPOINT_FILES
from fluxsr_cli.model.hub import BASE_FILES, resolve
from fluxsr_cli.model.tiny import add_to_hub_cache, save_tiny_checkpoint
from tests.conftest import HUB_BASE, HUB_MODEL
from tests.fake_hub import FakeHub


def files_of(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()}


def planned(repo: dl.RepoPlan) -> dict[str, int | None]:
    return {f.path: f.size for f in repo.files}


def test_format_bytes_and_base_patterns():
    assert [dl.format_bytes(n) for n in (0, 999, 1000, 335_000_000, 23_800_000_000, None)] == [
        "0 B", "999 B", "1.0 kB", "335.0 MB", "23.8 GB", "?"]
    assert dl.base_patterns(False) == BASE_FILES
    assert dl.base_patterns(True) == ["model_index.json", "vae/*"]
    assert dl.ships_transformer(["fluxsr.json", "transformer/config.json"])
    assert not dl.ships_transformer(["lora.safetensors", "transformer/config.json"])  # read_checkpoint's rule
    assert not dl.ships_transformer(["pytorch_lora_weights.safetensors"])


def test_offline_plan_lists_what_upscale_resolves(offline_hub):
    from huggingface_hub import snapshot_download

    plan = dl.plan_upscale(HUB_MODEL, offline=True)
    ckpt, base = plan.repos
    assert (ckpt.ref, base.ref) == (HUB_MODEL, HUB_BASE)  # the base named by the checkpoint's fluxsr.json
    sizes = 0
    for repo, patterns in ((ckpt, CHECKPOINT_FILES), (base, BASE_FILES)):
        folder = Path(snapshot_download(repo.ref, allow_patterns=patterns, local_files_only=True))
        assert planned(repo) == files_of(folder)
        assert all(f.cached for f in repo.files)
        sizes += sum(files_of(folder).values())
    assert plan.total_bytes == plan.cached_bytes == sizes
    assert plan.download_bytes == 0
    dl.check_plan(plan.__class__(plan.repos, plan.cache_dir, free_bytes=0, offline=True))  # nothing to fetch


def test_offline_plan_names_what_the_cache_lacks(tmp_path, tiny_ckpt, monkeypatch):
    import huggingface_hub.constants as constants

    base = tmp_path / "base"  # a sharded transformer whose second shard never arrived, and no vae/
    (base / "transformer").mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    (base / "transformer" / "config.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (base / "transformer" / "model.safetensors.index.json").write_text(json.dumps(index))
    (base / "transformer" / "model-00001-of-00002.safetensors").write_bytes(b"x" * 100)
    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "org/half-base", base)
    add_to_hub_cache(cache, "org/ckpt", tiny_ckpt)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    plan = dl.plan_upscale("org/ckpt", base="org/half-base", offline=True)
    missing = {f.path for f in plan.repos[1].files if not f.cached}
    assert missing == {"transformer/model-00002-of-00002.safetensors", "vae/*"}
    assert all(f.size is None for f in plan.repos[1].files if not f.cached)
    with pytest.raises(CheckpointError, match="offline mode is on and 2 files are not in the cache"):
        dl.check_plan(plan)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        dl.plan_upscale("org/nothing-here", offline=True)
    # only the transformer's config.json cached (what choosing the device fetches): its weights are missing
    config_only = tmp_path / "config-only"
    (config_only / "transformer").mkdir(parents=True)
    (config_only / "transformer" / "config.json").write_text("{}")
    add_to_hub_cache(cache, "org/config-only", config_only)
    plan = dl.plan_upscale("org/ckpt", base="org/config-only", offline=True)
    assert "transformer/ weights" in {f.path for f in plan.repos[1].files if not f.cached}


def test_full_transformer_checkpoint_needs_only_the_base_vae(tiny_base, tmp_path, monkeypatch):
    import torch

    from fluxsr_cli.model.architectures import TINY_TEXT_LENGTH, TINY_TRANSFORMER, random_embeddings
    from fluxsr_cli.model.checkpoint import CheckpointInfo, save_checkpoint
    from fluxsr_cli.model.loading import load_transformer

    ckpt = save_checkpoint(tmp_path / "full", CheckpointInfo(base_model="org/base"),
                           random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=1),
                           transformer=load_transformer(tiny_base, torch.float32))
    hub = FakeHub()
    hub.add("org/base", tiny_base)
    hub.add("org/full", ckpt)
    with hub.serving(monkeypatch, tmp_path / "hub"):
        plan = dl.plan_upscale("org/full")
    want = {p: s for p, s in files_of(tiny_base).items() if not p.startswith("transformer/")}
    assert planned(plan.repos[1]) == want
    assert any(p.startswith("transformer/") for p in planned(plan.repos[0]))


def test_online_plan_downloads_smallest_first_and_upscale_then_runs_offline(served_hub, tiny_base, monkeypatch):
    # a base file already in the cache (its blob) counts as cached and is not fetched again
    from huggingface_hub import hf_hub_download

    hf_hub_download("org/base", "vae/config.json")
    plan = dl.plan_upscale("org/ckpt")
    assert planned(plan.repos[1]) == files_of(tiny_base)
    assert planned(plan.repos[0]) == {p: len(d) for p, d in served_hub.repos["org/ckpt"].items()}
    assert [f.path for r in plan.repos for f in r.files if f.cached] == ["vae/config.json"]
    assert plan.download_bytes == plan.total_bytes - files_of(tiny_base)["vae/config.json"]
    served_hub.requests.clear()
    reports = []
    assert dl.download(plan, progress=lambda *a: reports.append(a)) == len(plan.repos[0].files) + 4
    sizes = {f"/org/{r.ref.split('/')[1]}/resolve/main/{f.path}": f.size for r in plan.repos for f in r.files}
    got = served_hub.file_gets()
    assert "/org/base/resolve/main/vae/config.json" not in got and len(got) == 7
    assert [sizes[p] for p in got] == sorted(sizes[p] for p in got)  # configs before weights
    assert reports[-1][1] == reports[-1][2] == 1  # the whole download, in (rounded-up) megabytes
    again = dl.plan_upscale("org/ckpt")
    assert again.download_bytes == 0 and again.cached_bytes == plan.total_bytes

    import huggingface_hub.constants as constants

    from fluxsr_cli.upscale.options import ModelOptions
    from fluxsr_cli.upscale.restore import load_upscaler

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    upscaler = load_upscaler(ModelOptions(model="org/ckpt", offline=True, device="cpu", dtype="fp32"))
    assert upscaler is not None


def test_too_small_a_disk_is_refused_before_any_file(served_hub):
    plan = dl.plan_upscale("org/ckpt", free_bytes=0)
    need = plan.download_bytes
    tight = dl.plan_upscale("org/ckpt", free_bytes=need - 1)
    served_hub.requests.clear()
    with pytest.raises(ResourceError, match=f"needs {dl.format_bytes(need)} but the disk has") as e:
        dl.download(tight)
    assert e.value.exit_code == 4 and "\n" not in str(e.value)
    assert served_hub.file_requests() == []
    dl.check_plan(dl.plan_upscale("org/ckpt", free_bytes=need))  # exactly enough is enough


@pytest.mark.parametrize("token", [None, "hf_without_access"])
def test_gated_base_is_refused_as_upscale_words_it_before_any_file(tiny_base, tmp_path, monkeypatch, token):
    hub = FakeHub(gated={"org/base"})
    hub.add("org/base", tiny_base)
    hub.add("org/ckpt", save_tiny_checkpoint(tmp_path / "ckpt", "org/base"))
    with hub.serving(monkeypatch, tmp_path / "hub", token=token):
        with pytest.raises(CheckpointError) as upscale:
            resolve("org/base", allow_patterns=BASE_FILES)
        plan = dl.plan_upscale("org/ckpt")  # the file listing of a gated repo is public, as on the Hub
        hub.requests.clear()
        with pytest.raises(CheckpointError) as fetched:
            dl.download(plan)
        assert hub.file_requests() == []  # not one file asked for, not even the checkpoint's: access comes first
        with pytest.raises(CheckpointError) as checked:
            dl.check_plan(plan)  # what --dry-run runs
    assert str(fetched.value) == str(checked.value) == str(upscale.value)
    assert ("not logged in" if token is None else "no access yet") in str(fetched.value)


def test_an_interrupted_download_keeps_its_finished_files_and_a_rerun_fetches_the_rest(served_hub):
    biggest = "transformer/diffusion_pytorch_model.safetensors"
    served_hub.broken.add(biggest)
    with pytest.raises(CheckpointError, match="org/base: download failed") as e:
        dl.download(dl.plan_upscale("org/ckpt"))
    assert "\n" not in str(e.value)
    served_hub.broken.clear()
    rerun = dl.plan_upscale("org/ckpt")
    assert [(r.ref, f.path) for r in rerun.repos for f in r.to_fetch] == [("org/base", biggest)]
    served_hub.requests.clear()
    assert dl.download(rerun) == 1
    assert served_hub.file_gets() == [f"/org/base/resolve/main/{biggest}"]


def test_a_dropped_connection_resumes_within_the_file_and_counts_each_byte_once(served_hub, monkeypatch):
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_hub_download

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # chunks smaller than the tiny file
    name = "transformer/diffusion_pytorch_model.safetensors"
    data = served_hub.repos["org/base"][name]
    served_hub.drop_once.add(name)
    seen = []
    bar = dl.byte_counter(seen.append)
    path = hf_hub_download("org/base", name, tqdm_class=bar)
    assert Path(path).read_bytes() == data
    ranges = [r for m, p, r in served_hub.requests if m == "GET" and p.endswith(name)]
    written = len(data) // 2 // 4096 * 4096  # the whole chunks that reached the file before the break
    assert ranges == ["", f"bytes={written}-"]  # the library resumed where the file stopped
    assert seen[-1] == len(data) and seen == sorted(seen)
    bar.finish(len(data))
    assert seen[-1] == len(data)


def test_a_transformer_file_as_base_needs_only_the_vae_of_the_named_base(offline_hub, tmp_path):
    """`--base flux1-dev.safetensors`: nothing to fetch for the transformer; the VAE comes from the base
    the checkpoint names, as load_upscaler takes it, or from --vae (then nothing from the Hub at all)."""
    from huggingface_hub import snapshot_download

    transformer = tmp_path / "flux1-dev.safetensors"
    transformer.write_bytes(b"a local file")
    plan = dl.plan_upscale(HUB_MODEL, base=str(transformer), offline=True)
    ckpt, base, vae = plan.repos
    assert base.local and base.files == () and (vae.role, vae.ref) == ("vae", HUB_BASE)
    folder = Path(snapshot_download(HUB_BASE, allow_patterns=["model_index.json", "vae/*"], local_files_only=True))
    assert planned(vae) == {k: v for k, v in files_of(folder).items() if k == "model_index.json" or k.startswith("vae/")}
    ae = tmp_path / "ae.safetensors"
    ae.write_bytes(b"a local VAE")
    assert [r.role for r in dl.plan_upscale(HUB_MODEL, base=str(transformer), vae=str(ae), offline=True).repos] == [
        "checkpoint", "base", "vae"]
    assert all(r.local for r in dl.plan_upscale(HUB_MODEL, base=str(transformer), vae=str(ae), offline=True).repos[1:])
    # --vae naming a Hub repo: its model_index.json and vae/, not the whole repo (FLUX.1-dev's is 57 GB)
    *_, hub_vae = dl.plan_upscale(HUB_MODEL, base=str(transformer), vae=HUB_BASE, offline=True).repos
    assert planned(hub_vae) == planned(vae)
