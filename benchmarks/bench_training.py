"""Training cost of Grad-Mimic (issue: Grad-Mimic runs).

1. One Grad-Mimic step vs one plain step, full fine-tuning of a torchvision ResNet-18 on 32×32
   inputs (CPU, or GPU when present): forward, backward, optimizer step; Grad-Mimic adds the
   closed-form head scores, the softmax weights and the re-weighted head gradient. Steps of the two
   kinds are interleaved and the median is reported.
2. A linear-probe run of E epochs (``mimic-explorer train --linear-probe``: backbone features once,
   E epochs on the head, signals, Stage 2, thumbnails, writes) vs one plain backbone pass over the
   same data (decode + transform + forward), on real CIFAR-10 shards; after a warm-up, the two are
   alternated ``--pairs`` times (ABBA order) and the medians compared; the run's own timings (features, epochs,
   the rest) are printed too, since on a shared machine the pass alone varies by ±20 %.

    python benchmarks/bench_training.py [--batch 32] [--repeats 20] [--epochs 20] [--pairs 5]
                                        [--skip-probe | --skip-steps]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ROOT.parent / "shared" / "data" / "cifar10"


def step_ratio(batch: int, repeats: int, device: str) -> dict:
    import torchvision

    from mimic_explorer.training.batches import TensorBatches
    from mimic_explorer.training.loop import TrainConfig, train

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    reference = torchvision.models.resnet18(num_classes=10).to(device)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in reference.fc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(batch * 2, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch * 2,), device=device)

    class OneStep(TensorBatches):
        def epoch(self, epoch):
            yield torch.arange(batch), x[:batch], y[:batch]

    batches = OneStep(x, y, batch, 0)
    config = TrainConfig(epochs=1, batch_size=batch, device=device)

    def timed(ref) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        train(model, batches, config, reference=ref)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(3):  # warm up both paths
        timed(None)
        timed(reference)
    plain, mimic = [], []
    for _ in range(repeats):
        plain.append(timed(None))
        mimic.append(timed(reference))
    p, m = statistics.median(plain), statistics.median(mimic)
    return {"batch": batch, "plain_s": p, "grad_mimic_s": m, "ratio": m / p}


def probe_ratio(epochs: int, shards: str, repeats: int = 3) -> dict:
    from mimic_explorer.commands.options import TrainOptions
    from mimic_explorer.commands.train import run_train
    from mimic_explorer.data.specs import open_source
    from mimic_explorer.data.transforms import default_transform
    from mimic_explorer.models.registry import build_model
    from mimic_explorer.training.pool_pass import pool_pass

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIMIC_EXPLORER_CACHE"] = tmp  # no feature cache from earlier runs
        source = open_source(f"wds:{shards}")
        torch.manual_seed(0)
        model = build_model("small_cnn", len(source.class_names)).eval()
        torch.save(model.state_dict(), Path(tmp) / "init.pt")
        transform = default_transform("small_cnn")

        def backbone_pass(limit: int | None = None) -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for batch in pool_pass(
                    source, source.labels, transform, 256, indices=None if limit is None else range(limit)
                ):
                    model(batch.inputs)
            return time.perf_counter() - start

        reference = Path(tmp) / "ref.pt"
        common = dict(init=str(Path(tmp) / "init.pt"), linear_probe=True, epochs=epochs, batch_size=128, quiet=True)
        run_train(
            TrainOptions(f"wds:{shards}", "small_cnn", str(Path(tmp) / "ref"), save_model=str(reference), **common),
            log=lambda s: None,
        )  # also warms up decoding, the model and the shard index
        backbone_pass(1024)
        passes, runs, timings = [], [], []

        def probe_run(rep: int) -> float:
            for f in (Path(tmp) / "features").glob("*.pt"):
                f.unlink()  # the Grad-Mimic run must compute its features itself
            start = time.perf_counter()
            run_train(
                TrainOptions(
                    f"wds:{shards}",
                    "small_cnn",
                    str(Path(tmp) / f"gm{rep}"),
                    reference=str(reference),
                    label_noise=0.3,
                    **common,
                ),
                log=lambda s: None,
            )
            seconds = time.perf_counter() - start
            timings.append(json.loads((Path(tmp) / f"gm{rep}" / "meta.json").read_text())["timings"])
            return seconds

        for rep in range(repeats):  # alternate the two, in ABBA order, so load drifts hit both alike
            if rep % 2 == 0:
                passes.append(backbone_pass())
                runs.append(probe_run(rep))
            else:
                runs.append(probe_run(rep))
                passes.append(backbone_pass())
        samples = len(source)
    p, r = statistics.median(passes), statistics.median(runs)
    return {
        "samples": samples,
        "epochs": epochs,
        "backbone_pass_s": p,
        "probe_run_s": r,
        "ratio": r / p,
        "ratios": [b / a for a, b in zip(passes, runs)],
        "features_s": statistics.median(t["features_s"] for t in timings),
        "epochs_s": statistics.median(t["train_s"] for t in timings),
        "rest_s": statistics.median(w - t["features_s"] - t["train_s"] for w, t in zip(runs, timings)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--shards", default=str(SHARDS / "train-00.tar"))
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="only the linear-probe run")
    parser.add_argument("--pairs", type=int, default=6, help="alternated (pass, run) pairs of the probe benchmark")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"device: {args.device}; torch threads: {torch.get_num_threads()}")
    if not args.skip_steps:
        print("| ResNet-18 32×32, full fine-tuning | plain step | Grad-Mimic step | ratio |")
        print("|---|---|---|---|")
    for batch in [] if args.skip_steps else args.batch:
        r = step_ratio(batch, args.repeats, args.device)
        print(
            f"| batch {batch} | {r['plain_s'] * 1e3:.1f} ms | {r['grad_mimic_s'] * 1e3:.1f} ms | {r['ratio']:.3f}× |",
            flush=True,
        )
    if not args.skip_probe:
        if not Path(args.shards).exists():
            print(f"shards not found: {args.shards}", file=sys.stderr)
            return 0
        r = probe_ratio(args.epochs, args.shards, args.pairs)
        print()
        print(
            "| linear probe (small_cnn backbone, CIFAR-10 shard) | one backbone pass | whole E-epoch probe run "
            "| ratio |"
        )
        print("|---|---|---|---|")
        print(
            f"| {r['samples']} samples, E = {r['epochs']} | {r['backbone_pass_s']:.1f} s "
            f"| {r['probe_run_s']:.1f} s | {r['ratio']:.2f}× "
            f"(each pair: {', '.join(f'{x:.2f}' for x in r['ratios'])}) |"
        )
        print(
            f"\nwithin the run (medians): features + thumbnails {r['features_s']:.2f} s, the {r['epochs']} head epochs "
            f"incl. checkpoint {r['epochs_s']:.2f} s, everything else {r['rest_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
