"""Pretrain the image tower of the image-text prototype: ``small_cnn`` on CIFAR-10 shards 00-03.

Why: the miniature of the paper's DataComp experiment (benchmarks/bench_pairs_flickr.py) needs a
"pretrained" image tower that never saw a Flickr8k photo. A small CNN trained on 40,000 CIFAR-10
images (random crop + flip) is the stand-in; shard 04 measures its accuracy. Its state dict (a
``SmallCNN`` for 10 classes) is what ``--init`` of the built-in dual encoder's image side loads.

Usage: nice -n 10 python benchmarks/pairs_image_tower.py [--epochs 8] [--width 32]
       [--out /work/bench_work/pairs/image_tower.pt]
Decoded images are cached (uint8) beside the output, so a rerun only trains.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mimic_explorer.data.specs import open_source
from mimic_explorer.data.transforms import ImageTransform
from mimic_explorer.models.checkpoints import save_checkpoint
from mimic_explorer.models.small import SmallCNN

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
WORK = Path("/work/bench_work/pairs")
MEAN = STD = 0.5


def uint8_images(pattern: str, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) uint8 images and (N,) labels of a CIFAR shard pattern, cached in ``cache``."""
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["x"], saved["y"]
    source = open_source(f"wds:{pattern}", index_dir=WORK)
    to_tensor = ImageTransform(32, 32, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    x = torch.stack([to_tensor(source.load(i)).round().to(torch.uint8) for i in range(len(source))])
    y = torch.from_numpy(source.labels.copy())
    torch.save({"x": x, "y": y}, cache)
    return x, y


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - MEAN) / STD


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip of a uint8 batch."""
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2,), generator=generator).tolist()
    out = padded[:, :, dy : dy + 32, dx : dx + 32]
    flip = torch.rand(len(x), generator=generator) < 0.5
    out = torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)
    return out


def accuracy(model: SmallCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(normalise(x[s : s + 1000])).argmax(1) for s in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=WORK / "image_tower.pt")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x, y = uint8_images(f"{CIFAR}/train-{{00..03}}.tar", args.out.parent / "cifar_train_u8.pt")
    xt, yt = uint8_images(f"{CIFAR}/train-04.tar", args.out.parent / "cifar_test_u8.pt")
    model = SmallCNN(10, width=args.width)
    steps = args.epochs * (len(x) // args.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for s in range(0, len(x) - args.batch_size + 1, args.batch_size):
            idx = order[s : s + args.batch_size]
            loss = F.cross_entropy(model(normalise(augment(x[idx], generator))), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(
            json.dumps(
                {
                    "epoch": epoch,
                    "loss": round(loss.item(), 3),
                    "test_acc": round(accuracy(model, xt, yt), 4),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )
    save_checkpoint(model, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
