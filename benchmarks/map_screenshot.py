"""A screenshot of the Map view of a run, served as ``panel serve`` serves it, taken in headless Chromium.

Used for the guide's picture (assets/map.png, from the CIFAR-10 run of ``bench_map_cifar.py``) and
the image-text one (``bench_map_flickr.py``): opens the Map tab, colours it by ``--colour``, types
``--search`` into the caption search (image-text runs), hovers the point at ``--hover`` (fractions of
the plot's width and height) and saves the Map view alone.

Usage: python benchmarks/map_screenshot.py RUN OUT.png [--colour "suggestion differs"] [--search dog]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(run: Path, out: Path, colour: str | None, search: str | None, hover: tuple[float, float]) -> None:
    """Serve ``run``, open its Map view in Chromium and save the view to ``out``."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    command = [sys.executable, "-m", "panel", "serve", str(ROOT / "mimic_explorer" / "app.py"), "--port", str(port)]
    command += ["--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}", "--args", str(run)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/app", timeout=180_000)
            page.get_by_text("Kept:").first.wait_for(timeout=180_000)
            page.locator(".bk-tab", has_text="Map").first.click()
            page.locator(".map-plot canvas").first.wait_for(timeout=180_000)
            if colour:
                page.locator(f"select:has(option[value='{colour}'])").first.select_option(colour)
            if search:
                field = page.locator(".map-view input[type='text']").first
                field.fill(search)
                field.press("Enter")
            time.sleep(15)  # the server re-renders the map in the new colours
            view = page.locator(".map-view").first
            view.evaluate("el => el.scrollIntoView({block: 'start'})")
            time.sleep(2)
            plot = page.locator(".map-plot").first.bounding_box()
            x, y = plot["x"] + plot["width"] * hover[0], plot["y"] + plot["height"] * hover[1]
            for step in range(12):  # a few moves: the pointer stream reports where the cursor rests
                page.mouse.move(x + step, y + step)
                time.sleep(0.2)
            time.sleep(4)
            top = view.bounding_box()
            page.screenshot(
                path=str(out),
                clip={
                    "x": top["x"],
                    "y": top["y"],
                    "width": top["width"],
                    "height": plot["y"] + plot["height"] - top["y"],
                },
            )
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("--colour", default=None)
    parser.add_argument("--search", default=None)
    parser.add_argument("--hover", type=float, nargs=2, default=(0.45, 0.45))
    args = parser.parse_args()
    screenshot(Path(args.run), Path(args.out), args.colour, args.search, tuple(args.hover))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
