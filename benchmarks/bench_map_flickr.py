"""The map of a real Flickr8k image-text run: image and caption embeddings under the reference.

Protocol (the first steps of ``bench_pairs_flickr.py``, shortened): the image tower is a
``small_cnn`` trained on CIFAR-10 (``--image-tower``, e.g. the backbone of ``bench_map_cifar.py``);
the "public checkpoint" P is the built-in dual encoder around it trained plainly on the clean dev
split (1,000 photos, every caption, image tower frozen: 20 epochs, 64-px photos); the pool is
``train-00`` (2,000 pairs, caption #0) with 30 % of its captions swapped, trained with frozen towers
from P's towers (fresh projections, 5 epochs) and Grad-Mimic against P on the text projection. Then
``mimic-explorer map`` lays out the image and the caption embeddings (PCA), and for each: how much
closer a pair's photo sits to its own caption than to another's (the reference's CLIP score for
kept and swapped pairs), the map's time, and with ``--screenshot`` the Map view with a caption search
highlighted (``map_screenshot.py``).

Usage: python benchmarks/bench_map_flickr.py --image-tower CNN.pt [--work ../bench_work/map-flickr]
       [--search dog] [--screenshot OUT.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
WORK = ROOT.parent / "bench_work" / "map-flickr"
COMMON = ["--arch", "small_dual", "--image-size", "64", "--batch-size", "128", "--seed", "0", "--quiet"]


def cli(*argv: str) -> None:
    from mimic_explorer.cli import main

    status = main(list(argv))
    if status != 0:
        raise SystemExit(f"mimic-explorer {' '.join(argv[:2])} exited {status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-tower", required=True)
    parser.add_argument("--work", default=str(WORK))
    parser.add_argument("--search", default="dog")
    parser.add_argument("--screenshot", default=None)
    args = parser.parse_args()
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    p = work / "P.pt"
    if not p.exists():
        cli(
            "train",
            "--data",
            f"wds:{FLICKR}/dev-00.tar",
            *COMMON,
            "--init",
            args.image_tower,
            "--frozen-image-tower",
            "--all-captions",
            "--epochs",
            "20",
            "--lr",
            "2e-3",
            "--weight-decay",
            "1.0",
            "--out",
            str(work / "pretrained"),
            "--save-model",
            str(p),
        )
    run = work / "pool"
    cli(
        "train",
        "--data",
        f"wds:{FLICKR}/train-00.tar",
        *COMMON,
        "--frozen-towers",
        "--init",
        str(p),
        "--fresh-projections",
        "--epochs",
        "5",
        "--lr",
        "3e-3",
        "--weight-decay",
        "0",
        "--reference",
        str(p),
        "--mimic-layer",
        "text",
        "--caption-noise",
        "0.3",
        "--out",
        str(run),
    )
    runs_s = time.perf_counter() - started

    from mimic_explorer.maps.run_map import make_map
    from mimic_explorer.store.layout import RunLayout
    from mimic_explorer.store.reader import open_run

    opened = open_run(run)
    samples = opened.samples
    layout = RunLayout(run)
    noisy = samples["is_noisy"].to_numpy(dtype=bool)
    result = {"pairs": len(samples), "swapped": int(noisy.sum()), "runs_s": runs_s}
    for source in ("text", "image"):  # the image map is made last: the app shows the newest
        t0 = time.perf_counter()
        make_map(layout, len(samples), source, "pca")
        result[f"map_{source}_s"] = time.perf_counter() - t0
    image, text = (np.asarray(np.load(layout.embedding(s)), dtype=np.float32) for s in ("image", "text"))
    own = (image * text).sum(axis=1)
    shuffled = (image * text[np.random.default_rng(0).permutation(len(text))]).sum(axis=1)
    result["cosine_own_caption_kept"] = float(own[~noisy].mean())
    result["cosine_own_caption_swapped"] = float(own[noisy].mean())
    result["cosine_random_caption"] = float(shuffled.mean())
    matches = samples["caption"].str.contains(args.search, case=False, regex=False)
    result["search"] = {"text": args.search, "matches": int(matches.sum())}
    (work / "map-results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if args.screenshot:
        from map_screenshot import screenshot

        screenshot(run, Path(args.screenshot), "caption search", args.search, (0.5, 0.5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
