"""Load `fluxsr demo`'s page in headless Chromium: a screenshot, and a check that the page rendered.

Starts the demo on a free localhost port (the tiny random checkpoint unless --model is given), has
Debian's ``chromium`` render it (``apt-get install -y chromium``), writes the screenshot, and checks
that the rendered DOM holds the page's controls (Gradio draws them with JavaScript, so this shows
the front end ran, not just that the server answered). Look at the PNG yourself.

    python bench/demo_screenshot.py -o demo.png
    python bench/demo_screenshot.py -o demo.png --model ./ckpt --base ./FLUX.1-dev --device cuda
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]
EXPECTED = ("FluxSR", "Low-resolution photo", "Scale", "Tile", "Colour fix", "Upscale", "bicubic | FluxSR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(*args: str, timeout: float = 120) -> str:
    """Run headless Chromium with ``args``; its stdout."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("demo_screenshot.png"))
    parser.add_argument("--model", help="checkpoint (default: a tiny random one made here)")
    parser.add_argument("--base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="1280,1000", help="window width,height")
    args = parser.parse_args()

    from fluxsr_cli.demo.service import DemoService
    from fluxsr_cli.demo.ui import launch
    from fluxsr_cli.upscale.options import ModelOptions
    from fluxsr_cli.upscale.restore import load_upscaler

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from fluxsr_cli.model.tiny import save_tiny_base, save_tiny_checkpoint

            model = str(save_tiny_checkpoint(Path(tmp) / "ckpt", save_tiny_base(Path(tmp) / "base")))
        upscaler = load_upscaler(ModelOptions(model=model, base=args.base, device=args.device))
        service = DemoService(upscaler, workdir=Path(tmp) / "work")
        port = free_port()
        demo = launch(service, host="127.0.0.1", port=port, block=False, quiet=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            budget = "--virtual-time-budget=20000"  # let the page's JavaScript run before the picture
            chromium(f"--window-size={args.size}", budget, f"--screenshot={args.output.resolve()}", url)
            dom = chromium(budget, "--dump-dom", url)
        finally:
            demo.close()
            service.close()
    missing = [text for text in EXPECTED if text not in dom]
    print(f"{args.output}: {args.output.stat().st_size} bytes; rendered DOM {len(dom)} chars")
    if missing:
        sys.exit(f"the rendered page lacks {missing}")
    print("the rendered page holds: " + ", ".join(EXPECTED))


if __name__ == "__main__":
    main()
