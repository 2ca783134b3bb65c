"""`upscale_file` and `run_batch` with a plain bicubic upscaler: planning, keep-going, resume, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from accelerate import PartialState
from PIL import Image

from fluxsr_cli.errors import ConfigError, FluxSRError, InputError
from fluxsr_cli.processes import AccelerateProcesses
from fluxsr_cli.upscale.batch import (
    BatchConfig,
    WriteOptions,
    plan_batch,
    resize_alpha,
    run_batch,
    upscale_file,
)
from tests.images.test_imageio import (
    make_16bit_rgb,
    make_icc,
    make_rgba,
    make_rotated_jpeg,
    make_truncated_jpeg,
    photo,
    srgb_icc,
)


def bicubic(rgb: np.ndarray) -> np.ndarray:
    assert rgb.dtype == np.float32 and rgb.ndim == 3 and rgb.shape[2] == 3
    h, w = rgb.shape[:2]
    return np.clip(cv2.resize(rgb, (w * 4, h * 4), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def never(rgb: np.ndarray) -> np.ndarray:
    raise AssertionError("the upscaler must not run")


def make_tree(root: Path) -> Path:
    """photos/a.png, b.jpg, sub/c.png, sub/deeper/d.tif (grey) + a hidden file and a text file."""
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(photo("astronaut", (24, 16))).save(root / "a.png")
    Image.fromarray(photo("coffee", (24, 16))).save(root / "b.jpg", quality=95)
    Image.fromarray(photo("chelsea", (20, 20))).save(root / "sub" / "c.png")
    Image.fromarray(photo("camera", (16, 24))).save(root / "sub" / "deeper" / "d.tif")
    Image.fromarray(photo("astronaut", (8, 8))).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- one file


def test_upscale_file_real_photo(tmp_path):
    src = tmp_path / "astronaut.png"
    Image.fromarray(photo()).save(src)
    result = upscale_file(src, tmp_path / "out" / "x4.png", bicubic, scale=4)
    assert (result.status, result.in_size, result.out_size) == ("done", (48, 32), (192, 128))
    out = np.asarray(Image.open(tmp_path / "out" / "x4.png"), np.float32) / 255
    expected = bicubic(photo().astype(np.float32) / 255)
    assert np.abs(out - expected).max() <= 0.5 / 255 + 1e-6
    assert result.seconds >= result.model_seconds > 0


def test_alpha_is_upscaled_separately(tmp_path):
    src = make_rgba(tmp_path / "a.png")
    upscale_file(src, tmp_path / "x4.png", bicubic)  # bicubic asserts it only ever sees 3 channels
    with Image.open(tmp_path / "x4.png") as out:
        assert out.mode == "RGBA" and out.size == (192, 128)
        alpha = np.asarray(out)[..., 3].astype(np.float32) / 255
    src_alpha = np.asarray(Image.open(src))[..., 3].astype(np.float32) / 255
    assert np.abs(alpha - resize_alpha(src_alpha, (192, 128))).max() <= 0.5 / 255 + 1e-6
    assert alpha[:, :80].min() == 1.0  # opaque half stays opaque, never black or see-through


@pytest.mark.parametrize("orientation", [6, 8])
def test_rotated_jpeg_output_dimensions_are_swapped(tmp_path, orientation):
    src = make_rotated_jpeg(tmp_path / "r.jpg", orientation)  # stored 48x32, shown 32x48
    result = upscale_file(src, tmp_path / "x4.jpg", bicubic)
    assert result.out_size == (128, 192)
    with Image.open(tmp_path / "x4.jpg") as out:
        assert out.size == (128, 192) and out.getexif()[0x0112] == 1


def test_16bit_and_icc_survive_upscale_file(tmp_path):
    upscale_file(make_16bit_rgb(tmp_path / "deep.png"), tmp_path / "deep_x4.png", bicubic)
    back = cv2.imread(str(tmp_path / "deep_x4.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (128, 192, 3) and (back % 257 != 0).any()
    upscale_file(make_icc(tmp_path / "icc.jpg"), tmp_path / "icc_x4.jpg", bicubic)
    assert Image.open(tmp_path / "icc_x4.jpg").info["icc_profile"] == srgb_icc()


def test_refusals_happen_before_the_model_runs(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(photo()).save(src)
    with pytest.raises(InputError, match="--max-pixels"):  # 192 x 128 = 24576 output pixels
        upscale_file(src, tmp_path / "big.png", never, options=WriteOptions(max_pixels=20_000))
    (tmp_path / "taken.png").write_bytes(b"x")
    with pytest.raises(InputError, match="exists"):
        upscale_file(src, tmp_path / "taken.png", never)
    with pytest.raises(FluxSRError, match="returned"):
        upscale_file(src, tmp_path / "bad.png", lambda rgb: rgb)
    assert not (tmp_path / "bad.png").exists()


# --------------------------------------------------------------------------- planning


def test_plan_mirrors_the_tree_and_filters(tmp_path):
    src = make_tree(tmp_path / "photos")
    rel = lambda jobs: [j.dst.relative_to(tmp_path / "out").as_posix() for j in jobs]  # noqa: E731
    assert rel(plan_batch(BatchConfig(src, tmp_path / "out"))) == ["a.png", "b.jpg"]
    assert rel(plan_batch(BatchConfig(src, tmp_path / "out", recursive=True, suffix="_x4", ext="PNG"))) == [
        "a_x4.png", "b_x4.png", "sub/c_x4.png", "sub/deeper/d_x4.png"]
    assert rel(plan_batch(BatchConfig(src, tmp_path / "out", recursive=True, include=("*.PNG",)))) == [
        "a.png", "sub/c.png"]
    assert rel(plan_batch(BatchConfig(src, tmp_path / "out", recursive=True, exclude=("sub/*",)))) == [
        "a.png", "b.jpg"]


def test_plan_reports_collisions_and_existing_outputs(tmp_path):
    src = make_tree(tmp_path / "photos")
    Image.fromarray(photo("coffee", (24, 16))).save(src / "a.jpg")  # a.png and a.jpg -> a.png
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").write_bytes(b"done before")
    jobs = {j.rel: j for j in plan_batch(BatchConfig(src, tmp_path / "out", ext="png"))}
    assert jobs["a.png"].status == jobs["a.jpg"].status == "failed"
    assert "collision" in jobs["a.png"].reason and "a.jpg" in jobs["a.png"].reason
    assert jobs["b.jpg"].status == "skipped"
    assert plan_batch(BatchConfig(src, tmp_path / "out", ext="png", overwrite=True))[2].status == "pending"


def test_plan_with_output_inside_input(tmp_path):
    src = make_tree(tmp_path / "photos")
    report = run_batch(BatchConfig(src, src / "x4", recursive=True), bicubic)
    assert report.done == 4
    again = plan_batch(BatchConfig(src, src / "x4", recursive=True))  # outputs are not inputs
    assert [j.status for j in again] == ["skipped"] * 4
    same = plan_batch(BatchConfig(src, src, suffix="_x4"))
    run_batch(BatchConfig(src, src, suffix="_x4"), bicubic, jobs=same)
    assert [j.rel for j in plan_batch(BatchConfig(src, src, suffix="_x4"))] == ["a.png", "b.jpg"]
    assert all(j.status == "failed" and "replace the input" in j.reason for j in plan_batch(BatchConfig(src, src)))


def test_plan_refuses_bad_folders_and_settings(tmp_path):
    with pytest.raises(InputError, match="not found"):
        plan_batch(BatchConfig(tmp_path / "nope", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        plan_batch(BatchConfig(tmp_path / "empty", tmp_path / "out"))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(InputError, match="fluxsr upscale"):
        plan_batch(BatchConfig(tmp_path / "file.png", tmp_path / "out"))
    with pytest.raises(ConfigError, match="ext"):
        BatchConfig(tmp_path, tmp_path / "out", ext="gif")
    with pytest.raises(ConfigError, match="suffix"):
        BatchConfig(tmp_path, tmp_path / "out", suffix="a/b")


# --------------------------------------------------------------------------- batches


def test_bad_files_are_reported_and_the_rest_continue(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_truncated_jpeg(src / "cut.jpg")
    (src / "empty.png").write_bytes(b"")
    make_icc(src / "good one.png")
    make_rgba(src / "ünïcode.png")
    config = BatchConfig(src, tmp_path / "out", report=tmp_path / "report.json")
    report = run_batch(config, bicubic)
    assert (report.done, report.skipped, report.failed) == (2, 0, 2)
    reasons = {Path(f.src).name: f.reason for f in report.files}
    assert "truncated" in reasons["cut.jpg"] and "empty file" in reasons["empty.png"]
    assert all("\n" not in r for r in reasons.values())
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["summary"]["done"] == 2 and saved["summary"]["failed"] == 2
    assert {Path(f["src"]).name: f["status"] for f in saved["files"]} == {
        "cut.jpg": "failed", "empty.png": "failed", "good one.png": "done", "ünïcode.png": "done"}
    assert all(f["seconds"] > 0 for f in saved["files"] if f["status"] == "done")
    assert saved["config"]["input_dir"] == str(src)
    assert sorted(outputs(tmp_path / "out")) == ["good one.png", "ünïcode.png"]


class Stop:
    """An upscaler that fails the way it is told after ``k`` files."""

    def __init__(self, k: int, error: BaseException):
        self.k, self.error, self.calls = k, error, 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.k:
            raise self.error
        return bicubic(rgb)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("injected out of memory")])
def test_resume_after_a_stop_gives_the_uninterrupted_outputs(tmp_path, error):
    src = make_tree(tmp_path / "photos")
    Image.fromarray(photo("coffee", (20, 12))).save(src / "sub" / "e.webp", quality=90)
    reference = run_batch(BatchConfig(src, tmp_path / "ref", recursive=True), bicubic)
    assert reference.done == 5

    config = BatchConfig(src, tmp_path / "out", recursive=True)
    if isinstance(error, KeyboardInterrupt):  # killed part-way: the batch stops, finished outputs stay
        with pytest.raises(KeyboardInterrupt):
            run_batch(config, Stop(2, error))
    else:  # one file fails: reported, the rest go on
        first = run_batch(config, Stop(2, error))
        assert first.failed == 3 and "RuntimeError: injected" in first.files[2].reason
    assert len(outputs(tmp_path / "out")) == 2  # no half-written or temporary files either
    second = run_batch(config, bicubic)
    assert (second.done, second.skipped, second.failed) == (3, 2, 0)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")


def test_ctrl_c_leaves_a_report_of_what_was_done(tmp_path):
    src = make_tree(tmp_path / "photos")
    report = tmp_path / "report.json"
    config = BatchConfig(src, tmp_path / "out", recursive=True, report=report)
    with pytest.raises(KeyboardInterrupt):
        run_batch(config, Stop(2, KeyboardInterrupt()))
    saved = json.loads(report.read_text())
    statuses = [f["status"] for f in saved["files"]]
    assert statuses.count("done") == 2 and saved["summary"]["done"] == 2
    left = [f for f in saved["files"] if f["status"] == "pending"]
    assert len(left) == len(statuses) - 2 and all("interrupted" in f["reason"] for f in left)


class Simulated(AccelerateProcesses):
    """Rank ``index`` of ``count`` in threads: accelerate's own split, a barrier, a shared gather."""

    def __init__(self, index: int, count: int, barrier: threading.Barrier, slots: list):
        fake = types.SimpleNamespace(num_processes=count, process_index=index)
        self.state = types.SimpleNamespace(
            split_between_processes=lambda items: PartialState.split_between_processes(fake, items),
            wait_for_everyone=barrier.wait)
        self.index, self.count, self.device = index, count, f"cuda:{index}"
        self.closes_at_exit = False
        self.barrier, self.slots = barrier, slots

    def gather(self, obj):
        self.slots[self.index] = obj
        self.barrier.wait()
        return list(self.slots)


def test_files_are_split_across_processes_with_one_merged_report(tmp_path):
    src = make_tree(tmp_path / "photos")
    make_rgba(src / "sub" / "f.png")
    single = run_batch(BatchConfig(src, tmp_path / "one", recursive=True), bicubic)

    count, barrier, slots, reports, calls = 3, threading.Barrier(3), [None] * 3, [None] * 3, [0, 0, 0]
    config = BatchConfig(src, tmp_path / "many", recursive=True, report=tmp_path / "report.json")

    def rank(i: int) -> None:
        def fn(rgb):
            calls[i] += 1
            return bicubic(rgb)

        reports[i] = run_batch(config, fn, processes=Simulated(i, count, barrier, slots))

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert calls == [2, 2, 1]  # accelerate's contiguous split of 5 files
    assert all(r.to_dict()["files"] == reports[0].to_dict()["files"] for r in reports)
    assert reports[0].done == 5 and reports[0].processes == 3
    assert sorted(f.rank for f in reports[0].files) == [0, 0, 1, 1, 2]
    assert outputs(tmp_path / "many") == outputs(tmp_path / "one") and single.done == 5
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["done"] == 5


def test_accelerate_single_process_does_everything(tmp_path):
    procs = AccelerateProcesses()
    assert (procs.index, procs.count) == (0, 1)
    assert procs.split([1, 2, 3]) == [1, 2, 3] and procs.gather("x") == ["x"]


SCRIPT = """
import atexit, sys, cv2, numpy as np
import torch.distributed as dist
from fluxsr_cli.upscale.batch import BatchConfig, run_batch
from fluxsr_cli.processes import default_processes

def bicubic(rgb):
    h, w = rgb.shape[:2]
    return np.clip(cv2.resize(rgb, (w * 4, h * 4), interpolation=cv2.INTER_CUBIC), 0, 1)

# registered first, so it runs last: after fluxsr's own exit handler
atexit.register(lambda: print("group open at exit:", dist.is_initialized(), flush=True))
config = BatchConfig(sys.argv[1], sys.argv[2], recursive=True, report=sys.argv[3])
procs = default_processes()
report = run_batch(config, bicubic, processes=procs)
again = run_batch(BatchConfig(sys.argv[1], sys.argv[2], recursive=True), bicubic)  # the group is still open
print("rank", procs.index, "of", procs.count, "done", report.done, "then skipped", again.skipped, flush=True)
"""


def rank_logs(log_dir: Path) -> str:
    """Every rank's own stdout and stderr (torchrun --redirects), for a failure message."""
    return "\n".join(f"--- {p.relative_to(log_dir)}\n{p.read_text()[-3000:]}"
                     for p in sorted(log_dir.rglob("*.log")))


@pytest.mark.slow
def test_two_real_processes_through_torchrun(tmp_path):
    """What `accelerate launch` sets up, on CPU with gloo: two ranks, one merged report, a clean exit."""
    src = make_tree(tmp_path / "photos")
    (tmp_path / "run.py").write_text(SCRIPT)
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "--log-dir", str(logs), "--redirects", "3",
         str(tmp_path / "run.py"), str(src), str(tmp_path / "out"), str(tmp_path / "report.json")],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:] + "\n" + rank_logs(logs)
    stdout = [line for p in sorted(logs.rglob("stdout.log")) for line in p.read_text().splitlines()]
    assert sorted(line for line in stdout if line.startswith("rank")) == [
        "rank 0 of 2 done 4 then skipped 4", "rank 1 of 2 done 4 then skipped 4"]
    # the group is destroyed before the interpreter's teardown, where gloo can abort the process
    assert stdout.count("group open at exit: False") == 2, rank_logs(logs)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["processes"] == 2
    assert [f["rank"] for f in report["files"]] == [0, 0, 1, 1]
    assert len(outputs(tmp_path / "out")) == 4
