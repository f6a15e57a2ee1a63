"""Benchmark: what a mimic score costs next to the forward pass and the training step it rides on.

One run measures, per model and batch size: a forward pass (eval, no autograd), a training step
(train mode, forward + backward + SGD step), head scoring (``mimic_scores(params="head")``, proj),
all-parameter scoring (``params="all"``, proj — and cos for information), and the paper's released
method (``vmap(grad)`` over every trainable parameter, then a per-sample Python loop that flattens
each gradient and takes its projection on the task vector). Ratios are printed side by side as a
markdown table.

How it measures (honest, and the same for every operation):
- time: every operation gets one warm-up call, then up to ``--rounds`` timed calls, interleaved round
  by round so that load from other processes on a shared machine hits all of them alike; an operation
  stops repeating after ``--budget`` seconds (the paper's method at large batches gets few calls, or
  only its first). The main table shows the best call (contention only ever adds time); the ratios of
  the medians are printed below it. CUDA: synchronised before and after each call.
- peak memory, CPU: each operation runs in a fresh process whose malloc hands every block of 64 KiB
  or more back to the OS on free (``MALLOC_MMAP_THRESHOLD_``), so the resident set tracks live memory.
  After one warm-up call we reset the kernel's resident-set high-water mark (``/proc/self/clear_refs``
  ← 5) and report VmHWM minus the resident set just before the measured call: the extra physical
  memory the operation needed, whoever allocated it (PyTorch's CPU allocator has no peak counter and
  tracemalloc does not see it). The paper's method is measured on its first call. CUDA:
  ``torch.cuda.max_memory_allocated`` minus the allocation before the call.
- the paper's method runs attention on the math SDPA backend (the fused CPU kernel has no vmap
  batching rule and would be slower), and on a large model in chunks of samples (its whole-batch vmap would need
  B×P gradient floats: 11 GB for ResNet-18 at B=256); the chunk is shown in the table.

Usage: python benchmarks/bench_scoring.py [--quick] [--device auto|cpu|cuda] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mimic_explorer.scoring import mimic_scores

OPS = ("forward", "train_step", "head", "all_proj", "all_cos", "paper")
PAPER_GRAD_BYTES = 2 << 30  # per-sample gradient memory one chunk of the paper's method may use


# ---------------------------------------------------------------- models


def build_model(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...], int]:
    torch.manual_seed(seed)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=10), (3, 32, 32), 10
    if name == "vit":
        # a small ViT on 32×32 images: 64 patches + class token, width 192, depth 6 (ViT-Tiny-like)
        model = torchvision.models.VisionTransformer(
            image_size=32, patch_size=4, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=10
        )
        with torch.no_grad():
            model.heads.head.weight.normal_(0, 0.02)  # torchvision zero-initialises the head
        return model, (3, 32, 32), 10
    raise KeyError(name)


def setup(name: str, batch: int, device: torch.device):
    model, shape, classes = build_model(name)
    model = model.to(device)
    reference = copy.deepcopy(model)
    with torch.no_grad():  # a reference fine-tuned from the same init: every weight moved a little
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((batch, *shape), generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    return model, reference, x, y


def paper_chunk(model: nn.Module, batch: int) -> int:
    num = sum(p.numel() for p in model.parameters() if p.requires_grad)
    chunk = max(1, PAPER_GRAD_BYTES // (4 * num))
    chunk = 1 << (chunk.bit_length() - 1)  # a power of two
    return min(batch, chunk)


# ---------------------------------------------------------------- operations


def make_op(op: str, model: nn.Module, reference: nn.Module, x, y) -> Callable[[], object]:
    if op == "forward":

        def forward():
            model.eval()
            with torch.no_grad():
                return model(x)

        return forward
    if op == "train_step":
        trained = copy.deepcopy(model).train()
        opt = torch.optim.SGD(trained.parameters(), lr=1e-3)

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(trained(x), y)
            loss.backward()
            opt.step()
            return loss

        # before a memory probe: drop the gradients, so the step's peak counts them as scoring's
        # peak counts its task vector (both are P floats made during the call)
        train_step.release = lambda: opt.zero_grad(set_to_none=True)
        return train_step
    if op == "head":
        return lambda: mimic_scores(model, reference, x, y, params="head", method="proj")
    if op == "all_proj":
        return lambda: mimic_scores(model, reference, x, y, params="all", method="proj")
    if op == "all_cos":
        return lambda: mimic_scores(model, reference, x, y, params="all", method="cos")
    if op == "paper":
        return make_paper(model, reference, x, y, paper_chunk(model, x.shape[0]))
    raise KeyError(op)


def make_paper(model: nn.Module, reference: nn.Module, x, y, chunk: int) -> Callable[[], torch.Tensor]:
    """The released Grad-Mimic scoring: vmap(grad) over all trainable parameters, then a Python loop
    over the batch that flattens each sample's gradient and projects it on the task vector."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ref = dict(reference.named_parameters())

    def loss_fn(params, buffers, xi, yi):
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample_grads = vmap(grad(loss_fn), in_dims=(None, None, 0, 0))

    def paper():
        with sdpa_kernel([SDPBackend.MATH]):  # has vmap batching rules; the fused CPU kernel has none
            return run()

    def run():
        model.eval()
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        v = torch.cat([(ref[n].detach() - params[n]).reshape(-1) for n in names])
        v_norm = v.norm()
        scores = []
        for start in range(0, x.shape[0], chunk):
            grads = per_sample_grads(params, buffers, x[start : start + chunk], y[start : start + chunk])
            for i in range(grads[names[0]].shape[0]):
                flat = torch.cat([grads[n][i].reshape(-1) for n in names])
                scores.append(-(flat @ v) / v_norm)
            del grads
        return torch.stack(scores)

    return paper


# ---------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_here(op: str, name: str, batch: int, device: torch.device, warm: bool) -> int:
    """Extra bytes at the peak of one call of ``op`` (after a warm-up call when ``warm``)."""
    model, reference, x, y = setup(name, batch, device)
    fn = make_op(op, model, reference, x, y)
    if warm:
        fn()
    getattr(fn, "release", lambda: None)()
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) * 1024


def peak_memory(op: str, name: str, batch: int, device: torch.device, threads: int | None, warm: bool) -> int:
    """CPU: in a fresh process whose malloc returns every block ≥ 64 KiB to the OS on free, so the
    resident set tracks live memory and no operation reuses memory another one left behind."""
    if device.type == "cuda":
        value = peak_memory_here(op, name, batch, device, warm)
        gc.collect()
        torch.cuda.empty_cache()
        return value
    cmd = [sys.executable, __file__, "--_memory", op, name, str(batch), "--device", str(device)]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += [] if warm else ["--_cold"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {op}/{name}/{batch} failed:\n{out.stderr[-2000:]}")
    return int(json.loads(out.stdout.strip().splitlines()[-1])["bytes"])


def time_ops(name: str, batch: int, device: torch.device, ops: list[str], rounds: int, budget_s: float):
    """Seconds per call of each op: every op's first (warm-up) call, then up to ``rounds`` more calls,
    interleaved round by round; an op stops repeating once its calls have used ``budget_s``. Returns
    best-of and median of the calls after warm-up (the warm-up call alone if there are none)."""
    model, reference, x, y = setup(name, batch, device)
    fns = {op: make_op(op, model, reference, x, y) for op in ops}
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {op: [] for op in ops}

    def call(fn) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    for op, fn in fns.items():
        first[op] = call(fn)
    for _ in range(rounds):
        for op, fn in fns.items():
            if first[op] + sum(times[op]) > budget_s:
                continue
            times[op].append(call(fn))
    best = {op: min(t) if t else first[op] for op, t in times.items()}
    median = {op: statistics.median(t) if t else first[op] for op, t in times.items()}
    return best, median, {op: len(t) for op, t in times.items()}


# ---------------------------------------------------------------- reporting


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model_name = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU, {model_name}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def table(results: list[dict]) -> str:
    head = (
        "| model | batch | forward | train step | head scoring (× fwd) | all-param proj (× step) "
        "| all-param cos (× step) | paper's method (× step) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = ["Time per call (best of the timed calls):", "", head]
    for r in results:
        t = r["time"]
        fwd, step = t["forward"], t["train_step"]
        chunk = f", chunks of {r['paper_chunk']}" if r["paper_chunk"] < r["batch"] else ""
        lines.append(
            f"| {r['model']} | {r['batch']} | {fwd * 1e3:.1f} ms | {step * 1e3:.1f} ms "
            f"| {t['head'] * 1e3:.1f} ms (**{t['head'] / fwd:.2f}×**) "
            f"| {t['all_proj'] * 1e3:.1f} ms (**{t['all_proj'] / step:.2f}×**) "
            f"| {t['all_cos'] * 1e3:.1f} ms ({t['all_cos'] / step:.2f}×) "
            f"| {t['paper'] * 1e3:.0f} ms ({t['paper'] / step:.1f}×{chunk}) |"
        )
    lines += [
        "",
        "Ratios of the medians (timed calls after the warm-up in brackets; 0 = the warm-up call alone):",
        "",
        "| model | batch | head / fwd | all proj / step | all cos / step | paper / step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m, n = r["median"], r["calls"]
        fwd, step = m["forward"], m["train_step"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {m['head'] / fwd:.2f} ({n['head']}) | {m['all_proj'] / step:.2f} "
            f"({n['all_proj']}) | {m['all_cos'] / step:.2f} ({n['all_cos']}) | {m['paper'] / step:.1f} ({n['paper']}) |"
        )
    lines += ["", "Peak memory above the resident set before the call (MB):", "", head]
    for r in results:
        m = {k: v / 2**20 for k, v in r["memory"].items()}
        fwd, step = max(m["forward"], 1e-9), max(m["train_step"], 1e-9)
        lines.append(
            f"| {r['model']} | {r['batch']} | {m['forward']:.0f} | {m['train_step']:.0f} "
            f"| {m['head']:.0f} ({m['head'] / fwd:.2f}×) | {m['all_proj']:.0f} (**{m['all_proj'] / step:.2f}×**) "
            f"| {m['all_cos']:.0f} ({m['all_cos'] / step:.2f}×) | {m['paper']:.0f} ({m['paper'] / step:.1f}×) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="batch 32 only, fewer rounds (about a minute on 2 CPU cores)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--models", default="resnet18,vit")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 32,256; --quick: 32)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; --quick: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds of repeated calls per op (default 15; --quick: 5)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--_memory", nargs=3, metavar=("OP", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--_cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args._memory:
        op, name, batch = args._memory
        print(json.dumps({"bytes": peak_memory_here(op, name, int(batch), device, warm=not args._cold)}))
        return
    batches = [int(b) for b in (args.batches or ("32" if args.quick else "32,256")).split(",")]
    rounds = args.rounds or (3 if args.quick else 7)
    args.budget = args.budget or (5.0 if args.quick else 15.0)
    results = []
    started = time.perf_counter()
    for name in args.models.split(","):
        for batch in batches:
            probe_model, *_ = setup(name, 1, torch.device("cpu"))
            chunk = paper_chunk(probe_model, batch)
            del probe_model
            times, medians, counts = time_ops(name, batch, device, list(OPS), rounds, budget_s=args.budget)
            # the paper's method is slow and its memory is its per-sample gradients: one cold call
            memory = (
                dict.fromkeys(OPS, 0)
                if args.no_memory
                else {op: peak_memory(op, name, batch, device, args.threads, warm=op != "paper") for op in OPS}
            )
            results.append(
                {
                    "model": name,
                    "batch": batch,
                    "time": times,
                    "median": medians,
                    "calls": counts,
                    "memory": memory,
                    "paper_chunk": chunk,
                }
            )
            print(
                f"# {name} B={batch}: "
                + ", ".join(
                    f"{k} best {v * 1e3:.1f} / median {medians[k] * 1e3:.1f} ms ({counts[k]} calls)"
                    for k, v in times.items()
                )
                + "; MB "
                + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in memory.items()),
                file=sys.stderr,
                flush=True,
            )
    text = f"Machine: {machine(device)}. Total benchmark time {time.perf_counter() - started:.0f} s.\n\n" + table(
        results
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
