"""Detection quality on real data, in the paper's experiment shape.

Two modes. ``--study`` (issue 15): a reference that never saw the pool, the full study of what moves
detection; its protocol is in ``detection_runs.py``, its post-hoc cells in ``detection_cells.py``.
Without it (issue 4), the shared-shards protocol below:

(a) digits, MLP, model and reference from the same init (the demo protocol), 30 % and 50 %
    symmetric noise;
(b) CIFAR-10 shards (../shared/data): a small CNN (or ``--arch``, e.g. ``timm:resnet18`` with
    ``--image-size 32``) trained from random init on shards 02–03 is the frozen "pretrained"
    backbone; linear probes on shards 00–01 (reference: clean labels; plain and Grad-Mimic: noisy
    labels), shard 04 is the test set; 30 % / 50 % symmetric and 30 % asymmetric noise; plus a
    temperature sweep at 30 % symmetric.

Everything goes through the real pipeline (``run_train``), so the runs are cached: a second
invocation reuses every finished run. Prints a markdown table and writes JSON next to it.

    python benchmarks/bench_detection.py [--work DIR] [--skip-cifar] [--epochs 20] [--arch ARCH --image-size N]
    python benchmarks/bench_detection.py --study [--labelled-only] [--work DIR]

Runs are kept in ``--work`` (default ``../bench_work/detection`` beside the repository, so they
outlive a worktree): the study under ``study/``, the issue-4 runs under ``issue4/`` (another ``--arch``'s
CIFAR-10 runs in a sub-folder named after it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ROOT.parent / "shared" / "data" / "cifar10"
WORK = ROOT.parent / "bench_work" / "detection"
sys.path.insert(0, str(ROOT))  # this checkout's package, not whichever one is installed
#: the backbone of protocol (b) unless ``--arch`` names another
DEFAULT_ARCH = "small_cnn"


def digits_rows(work: Path) -> list[dict]:
    from mimic_explorer.commands.demo import DemoConfig, build_demo
    from mimic_explorer.store.reader import open_run

    rows = []
    for noise in (0.3, 0.5):
        out = work / f"digits-{int(noise * 100)}"
        summary = build_demo(out, DemoConfig(noise_rate=noise))
        evaluation = open_run(out).meta["evaluation"]
        rows.append(
            _row(
                f"digits MLP, {int(noise * 100)}% sym",
                summary["test_accuracy"]["plain"],
                summary["test_accuracy"]["grad_mimic"],
                evaluation,
            )
        )
    return rows


def _row(name: str, plain_acc: float | None, gm_acc: float | None, evaluation: dict, extra: str = "") -> dict:
    m = evaluation["mimic_score"]
    return {
        "setting": name,
        "plain_acc": plain_acc,
        "gm_acc": gm_acc,
        "auroc": m["auroc"],
        "ap": m["ap"],
        "precision": m["precision"],
        "recall": m["recall"],
        "f1": m["f1"],
        "estimated_quality": m["estimated_quality"],
        "true_quality": m["true_quality"],
        "baselines": {k: {"auroc": v["auroc"], "f1": v.get("f1")} for k, v in evaluation.items() if k != "mimic_score"},
        "note": extra,
    }


def cifar_rows(
    work: Path, epochs: int, temperatures: list[float], arch: str = DEFAULT_ARCH, image_size: int | None = None
) -> list[dict]:
    """Protocol (b) with ``arch`` as the backbone (random init, trained on shards 02–03), fed
    ``image_size``-px images when given (else the model's own preprocessing)."""
    from mimic_explorer.commands.options import TrainOptions
    from mimic_explorer.commands.train import run_train

    pool = f"wds:{SHARDS}/train-{{00..01}}.tar"
    test = f"wds:{SHARDS}/train-04.tar"
    backbone = work / "backbone.pt"
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    model = dict(image_size=image_size, quiet=True)
    t0 = time.perf_counter()
    trained = run_train(
        TrainOptions(
            f"wds:{SHARDS}/train-{{02..03}}.tar",
            arch,
            str(work / "backbone-run"),
            epochs=6,
            batch_size=128,
            lr=2e-3,
            save_model=str(backbone),
            **model,
        ),
        log=say,
    )
    say(f"backbone ready ({time.perf_counter() - t0:.0f} s{', cached' if trained.cached else ''})")
    probe = dict(init=str(backbone), linear_probe=True, epochs=epochs, batch_size=128, lr=1e-3, test_data=test, **model)
    reference = work / "reference.pt"
    run_train(TrainOptions(pool, arch, str(work / "reference-run"), save_model=str(reference), **probe), log=say)
    label = (
        "" if arch == DEFAULT_ARCH and image_size is None else f" ({arch}{f', {image_size} px' if image_size else ''})"
    )
    rows = []
    settings = [("30% sym", 0.3, "symmetric"), ("50% sym", 0.5, "symmetric"), ("30% asym", 0.3, "asymmetric")]
    for name, rate, kind in settings:
        noise = dict(label_noise=rate, noise_type=kind)
        tag = f"{kind[:4]}{int(rate * 100)}"
        plain = run_train(TrainOptions(pool, arch, str(work / f"plain-{tag}"), **noise, **probe), log=say)
        gm = run_train(
            TrainOptions(pool, arch, str(work / f"gm-{tag}"), reference=str(reference), **noise, **probe), log=say
        )
        rows.append(
            _row(
                f"CIFAR-10 linear probe{label}, {name}",
                plain.summary["test_accuracy"],
                gm.summary["test_accuracy"],
                _evaluation(gm.path),
            )
        )
        say(f"done {name}")
    for temperature in temperatures:
        gm = run_train(
            TrainOptions(
                pool,
                arch,
                str(work / f"gm-sym30-T{temperature:g}"),
                reference=str(reference),
                label_noise=0.3,
                temperature=temperature,
                **probe,
            ),
            log=say,
        )
        rows.append(
            _row(
                f"CIFAR-10 probe{label}, 30% sym, T={temperature:g}",
                None,
                gm.summary["test_accuracy"],
                _evaluation(gm.path),
                "temperature sweep",
            )
        )
    return rows


def arch_folder(work: Path, arch: str, image_size: int | None) -> Path:
    """Where protocol (b)'s runs for ``arch`` are kept: ``work`` itself for the default backbone (as
    before), a sub-folder named after the ARCH and input size for any other."""
    if arch == DEFAULT_ARCH and image_size is None:
        return work
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in arch)
    return work / (name + (f"-{image_size}px" if image_size else ""))


def _evaluation(path: Path) -> dict:
    from mimic_explorer.store.reader import open_run

    return open_run(path).meta["evaluation"]


def markdown(rows: list[dict]) -> str:
    def fmt(value):
        return "–" if value is None else f"{value:.3f}"

    lines = [
        (
            "| setting | plain acc | Grad-Mimic acc | AUROC | AP | precision | recall | F1 | est. quality "
            "| true quality | baselines AUROC (ref loss / reducible / GraNd / model loss) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["baselines"]
        base = " / ".join(
            fmt(b.get(k, {}).get("auroc")) for k in ("reference_loss", "reducible_loss", "grand", "model_loss")
        )
        lines.append(
            f"| {r['setting']} | {fmt(r['plain_acc'])} | {fmt(r['gm_acc'])} | {fmt(r['auroc'])} | {fmt(r['ap'])} | "
            f"{fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['f1'])} | {fmt(r['estimated_quality'])} | "
            f"{fmt(r['true_quality'])} | {base} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(WORK), help="where runs are kept (default: %(default)s)")
    parser.add_argument("--study", action="store_true", help="the disjoint-reference study (issue 15) instead")
    parser.add_argument(
        "--labelled-only",
        action="store_true",
        help="with --study: the labelled-pool settings alone (no Stage-1 method cells, no fine-tuned pair)",
    )
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument("--epochs", type=int, default=20, help="linear-probe epochs")
    parser.add_argument(
        "--temperatures", default="0.5,2,5", help="extra temperatures for the sweep (T=1 is the main row)"
    )
    parser.add_argument(
        "--arch",
        default=DEFAULT_ARCH,
        help="backbone of the CIFAR-10 protocol, any ARCH train takes, e.g. timm:resnet18 "
        "(random init, trained on shards 02-03 like small_cnn) (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="feed the CIFAR-10 backbone N-px images (default: the model's own preprocessing; "
        "timm:resnet18's is 224 px, far too slow on a CPU: use 32 or 64)",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    if args.study:
        from detection_study import run_study

        return run_study(Path(args.work) / "study", labelled_only=args.labelled_only)
    work = Path(args.work) / "issue4"
    work.mkdir(parents=True, exist_ok=True)
    rows = digits_rows(work)
    if not args.skip_cifar:
        if not (SHARDS / "train-00.tar").exists():
            print(f"CIFAR-10 shards not found at {SHARDS}; skipping (b)", file=sys.stderr)
        else:
            folder = arch_folder(work, args.arch, args.image_size)
            folder.mkdir(parents=True, exist_ok=True)
            rows += cifar_rows(
                folder,
                args.epochs,
                [float(t) for t in args.temperatures.split(",") if t],
                arch=args.arch,
                image_size=args.image_size,
            )
    (work / "detection.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
