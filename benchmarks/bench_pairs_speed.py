"""Image–text pairs: scoring and training speed (issue 14).

Side by side in one run, on real Flickr8k pairs (photos and their first captions from
``../shared/data/flickr8k/dev-00.tar``), for the built-in small dual encoder (``small_cnn`` image
tower on 32×32 photos + bag-of-words text tower) and open_clip ``ViT-B-32`` with random weights
(224×224, its own tokenizer):

1. **Scoring the projection layer** (``PreparedScorer(params=[image|text projection], loss=InfoNCELoss())``:
   the output layer's path, proj and cos) against **a plain forward of the towers** (eval, no
   autograd). Bar: proj ≤ 1.2× the forward.
2. **A Grad-Mimic training step** (``loss_step.LossStep`` with the text projection as the mimic layer:
   scores, softmax weights, re-weighted projection gradient, mean gradient for the rest) against
   **a plain step** (forward, backward of the mean InfoNCE), each followed by a fused AdamW step,
   every parameter trainable. Bar: ≤ 1.1× for the default method ``normed_proj`` (proj by one
   forward-mode pass through the loss); ``normed_cos`` (Jacobian rows for ‖g_i‖) is shown beside it.
   The frozen-tower mode's step (``ProjectionProbe`` on cached tower outputs) is measured too, for
   information: a step of a few small matmuls.

Reference = the model with its projections moved a little (towers shared). Each operation gets one
warm-up call, then ``--repeats`` rounds in which every operation runs once (so load from other jobs
hits all alike); the table gives the median per operation and ratios of medians.

    python benchmarks/bench_pairs_speed.py [--repeats 5] [--batch 256] [--vit-batch 16] [--threads 1]
                                           [--skip-vit | --skip-builtin] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k" / "dev-00.tar"


def flickr_pairs(count: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` real photos (resized to size×size, in [0, 1]) and their first captions."""
    from PIL import Image

    images, captions, pending = [], [], {}
    with tarfile.open(FLICKR) as tar:
        for member in tar:
            key, _, ext = member.name.rpartition(".")
            if ext not in ("jpg", "txt"):
                continue
            pending.setdefault(key, {})[ext] = tar.extractfile(member).read()
            if len(pending[key]) == 2:
                item = pending.pop(key)
                photo = Image.open(io.BytesIO(item["jpg"])).convert("RGB").resize((size, size))
                images.append(torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1))
                captions.append(item["txt"].decode("utf-8").strip())
                if len(images) == count:
                    break
    return torch.stack(images), captions


def moved_projections(model, scale: float = 0.01):
    """A reference sharing the towers, with both projections moved."""
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in (reference.image_projection, reference.text_projection):
            layer.weight.add_(scale * torch.randn(layer.weight.shape, generator=gen))
    return reference


def interleaved(operations: dict, repeats: int) -> dict[str, float]:
    """Median seconds per operation: one warm-up call each, then ``repeats`` rounds of one call each."""
    for fn in operations.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in operations}
    for _ in range(repeats):
        for name, fn in operations.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def scoring_ops(model, reference, inputs) -> dict:
    from mimic_explorer.scoring import PreparedScorer
    from mimic_explorer.scoring.contrastive import InfoNCELoss

    model.eval()

    def forward():
        with torch.no_grad():
            model(*inputs)

    ops = {"forward": forward}
    for layer in ("image", "text"):
        for method in ("proj", "cos"):
            scorer = PreparedScorer(
                model, reference, params=[f"{layer}_projection.weight"], method=method, loss=InfoNCELoss()
            )
            ops[f"{layer} {method}"] = lambda s=scorer: s(inputs, None)
    return ops


def step_ops(model, reference, inputs, mimic: str, prefix: str = "") -> dict:
    """A plain and a Grad-Mimic step (each on its own copy of the model, with its own fused AdamW)."""
    from mimic_explorer.scoring.contrastive import InfoNCELoss
    from mimic_explorer.scoring.stage1 import stage1_weights
    from mimic_explorer.training.loss_step import LossStep

    index = torch.arange(len(inputs[0]))
    ops = {}
    kinds = (
        ("plain step", None, "normed_proj"),
        ("Grad-Mimic step", reference, "normed_proj"),
        ("Grad-Mimic cos step", reference, "normed_cos"),
    )
    for kind, ref, method in kinds:
        copy_ = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW([p for p in copy_.parameters() if p.requires_grad], lr=1e-5, fused=True)
        step = LossStep(
            copy_,
            ref,
            InfoNCELoss(),
            [mimic] if ref is not None else None,
            "head",
            lambda proj, cos, on, m=method: stage1_weights(cos if m.endswith("cos") else proj, m),
            lambda losses, idx: None,
            need_cos=method.endswith("cos"),
        )

        def run(step=step, optimizer=optimizer):
            step(inputs, None, index, True)
            optimizer.step()

        ops[prefix + kind] = run
    return ops


def bench_model(name: str, model, reference, inputs, repeats: int) -> dict:
    from mimic_explorer.models.dual import ProjectionProbe

    result = {"model": name, "batch": len(inputs[0])}
    started = time.perf_counter()
    result["scoring"] = interleaved(scoring_ops(model, reference, inputs), repeats)
    result["steps"] = interleaved(step_ops(model, reference, inputs, "text_projection.weight"), repeats)
    with torch.no_grad():
        features = model.eval().tower_features(*inputs)
    probe, probe_ref = ProjectionProbe.from_dual_encoder(model), ProjectionProbe.from_dual_encoder(reference)
    result["probe_steps"] = interleaved(
        step_ops(probe, probe_ref, (features,), "text_projection.weight"), max(repeats, 20)
    )
    result["seconds"] = time.perf_counter() - started
    return result


def builtin(batch: int):
    from mimic_explorer.models.dual_registry import build_dual_encoder

    images, captions = flickr_pairs(batch, 32)
    torch.manual_seed(0)
    model = build_dual_encoder("small_cnn", captions=captions, input_shape=(3, 32, 32))
    return "built-in (small_cnn + bag of words)", model, (images, model.tokenizer.encode(captions).ids)


def vit_b_32(batch: int):
    from mimic_explorer.models.dual_registry import build_dual_encoder

    images, captions = flickr_pairs(batch, 224)
    torch.manual_seed(0)
    model = build_dual_encoder("open_clip:ViT-B-32")
    return "open_clip ViT-B-32 (random weights)", model, (images, model.tokenizer.encode(captions).ids)


def table(results: list[dict]) -> str:
    lines = [
        (
            "| model | batch | tower forward | image proj (× fwd) | text proj (× fwd) | image cos (× fwd) "
            "| text cos (× fwd) | plain step | Grad-Mimic step (× plain) | GM step, normed_cos (× plain) "
            "| frozen-tower plain step | frozen-tower GM step (× plain) | frozen-tower GM, normed_cos (× plain) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s, t, p = r["scoring"], r["steps"], r["probe_steps"]
        fwd = s["forward"]

        def cell(value, base, bold=False):
            ratio = f"{value / base:.2f}×"
            return f"{value * 1e3:.1f} ms ({'**' + ratio + '**' if bold else ratio})"

        lines.append(
            f"| {r['model']} | {r['batch']} | {fwd * 1e3:.1f} ms | {cell(s['image proj'], fwd, True)} "
            f"| {cell(s['text proj'], fwd, True)} "
            f"| {cell(s['image cos'], fwd)} | {cell(s['text cos'], fwd)} | {t['plain step'] * 1e3:.1f} ms "
            f"| {cell(t['Grad-Mimic step'], t['plain step'], True)} "
            f"| {cell(t['Grad-Mimic cos step'], t['plain step'])} "
            f"| {p['plain step'] * 1e3:.2f} ms | {cell(p['Grad-Mimic step'], p['plain step'])} "
            f"| {cell(p['Grad-Mimic cos step'], p['plain step'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="pairs a batch for the built-in model")
    parser.add_argument("--vit-batch", type=int, default=16, help="pairs a batch for ViT-B-32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--skip-builtin", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw medians here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    makers = ([] if args.skip_builtin else [(builtin, args.batch)]) + (
        [] if args.skip_vit else [(vit_b_32, args.vit_batch)]
    )
    for maker, batch in makers:
        name, model, inputs = maker(batch)
        result = bench_model(name, model, moved_projections(model), inputs, args.repeats)
        print(json.dumps(result), flush=True)
        results.append(result)
    print(
        f"\ntorch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"repeats {args.repeats}; load average {Path('/proc/loadavg').read_text().split()[:3]}"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
