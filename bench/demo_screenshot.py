"""Use `fluxsr demo`'s page in headless Chromium: upload a photo, press Upscale, take a screenshot.

Starts the demo on a free localhost port (the tiny random checkpoint unless --model is given), drives
Debian's ``chromium`` (``apt-get install -y chromium``) over the DevTools protocol on a pipe (no
extra packages): the photo goes in through the page's own file input, the Upscale button is
clicked, and once the result is shown the script checks the page (the slider's two images at the
output size, the download, the status line) and writes a screenshot. Look at the PNG yourself.

    python bench/demo_screenshot.py -o demo.png
    python bench/demo_screenshot.py -o demo.png --image photo.jpg --model ./ckpt --base ./FLUX.1-dev --device cuda
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]
CONTROLS = ("FluxSR", "Low-resolution photo", "Scale", "Tile", "Colour fix", "Upscale", "bicubic | FluxSR")


class Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (commands on fd 3, replies on fd 4)."""

    def __init__(self, size: str = "1280,900") -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("chromium not found: apt-get install -y chromium")
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="chromium-")

        def pipes_on_3_and_4() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(reply_w, 4)

        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--window-size={size}", f"--user-data-dir={self._profile}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=pipes_on_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(reply_w)
        self._buffer, self._id, self._session = b"", 0, None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def send(self, method: str, **params) -> dict:
        """One DevTools command; its result (events on the way are skipped)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self._session and not method.startswith("Target."):
            message["sessionId"] = self._session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._reply_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        raise SystemExit(f"the page never showed: {expression}")

    def upload(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(path.resolve())], nodeId=node)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        os.close(self._cmd_w)
        os.close(self._reply_r)
        shutil.rmtree(self._profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_the_page(url: str, image: Path, screenshot: Path, size: str) -> dict:
    """Upload ``image``, press Upscale, wait for the result, check it and take the screenshot."""
    browser = Chromium(size)
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=url)
        browser.wait_for("!!document.querySelector('input[type=file]')")
        text = browser.js("document.body.innerText")
        missing = [c for c in CONTROLS if c not in text]
        browser.upload("input[type=file]", image)
        browser.wait_for("document.querySelectorAll('img').length > 0 && [...document.querySelectorAll('img')]"
                         ".some(i => i.src.includes('/file=') || i.src.includes('/gradio_api/file'))")
        start = time.perf_counter()
        browser.js("[...document.querySelectorAll('button')].find(b => b.textContent.trim() == 'Upscale').click()")
        status = browser.wait_for("[...document.querySelectorAll('.prose, .md')].map(e => e.innerText)"
                                  ".find(t => /x\\d+: \\d+x\\d+/.test(t))", timeout=600)
        seconds = time.perf_counter() - start
        time.sleep(1.0)  # the slider's images finish decoding
        shown = browser.js("JSON.stringify([...document.querySelectorAll('img')].filter(i => /_x\\d+\\.png$/"
                           ".test(i.src)).map(i => [i.src.split('/').pop(), i.naturalWidth, i.naturalHeight]))")
        download = browser.js("document.body.innerText").replace("\n", "")  # the file's name, split in spans
        browser.screenshot(screenshot)
    finally:
        browser.close()
    return {"missing": missing, "status": status, "seconds": seconds, "slider": json.loads(shown or "[]"),
            "download": download}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("demo_screenshot.png"))
    parser.add_argument("--image", type=Path, help="photo to upload (default: a 75x50 cat from scikit-image)")
    parser.add_argument("--model", help="checkpoint (default: a tiny random one made here)")
    parser.add_argument("--base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="1280,900", help="window width,height")
    args = parser.parse_args()

    from PIL import Image

    from fluxsr_cli.demo.service import DemoService
    from fluxsr_cli.demo.ui import launch
    from fluxsr_cli.upscale.options import ModelOptions
    from fluxsr_cli.upscale.restore import load_upscaler

    with tempfile.TemporaryDirectory() as tmp:
        image = args.image
        if image is None:
            from skimage import data

            image = Path(tmp) / "cat.png"
            Image.fromarray(data.chelsea()[::6, :450:6]).save(image)
        model = args.model
        if model is None:
            from fluxsr_cli.model.tiny import save_tiny_base, save_tiny_checkpoint

            model = str(save_tiny_checkpoint(Path(tmp) / "ckpt", save_tiny_base(Path(tmp) / "base")))
        service = DemoService(load_upscaler(ModelOptions(model=model, base=args.base, device=args.device)),
                              workdir=Path(tmp) / "work")
        demo = launch(service, host="127.0.0.1", port=free_port(), block=False, quiet=True)
        try:
            seen = use_the_page(demo.local_url, image, args.output, args.size)
        finally:
            demo.close()
            service.close()
        w, h = Image.open(image).size

    expected = [w * 4, h * 4]
    print(f"{args.output}: screenshot after an x4 upscale of {image.name} ({w}x{h}) in {seen['seconds']:.1f} s")
    print(f"status line: {seen['status']!r}")
    print(f"slider images: {seen['slider']}")
    problems = [f"controls missing: {seen['missing']}"] if seen["missing"] else []
    if len(seen["slider"]) != 2 or any(s[1:] != expected for s in seen["slider"]):
        problems.append(f"the slider should show two {expected[0]}x{expected[1]} images")
    if f"{image.stem}_x4.png" not in seen["download"]:
        problems.append("no download link for the PNG")
    if problems:
        sys.exit("; ".join(problems))
    print("the page shows its controls, the before/after slider at the output size and the PNG download")


if __name__ == "__main__":
    main()
