"""The runs of the disjoint-reference detection study (``bench_detection.py --study``).

Protocol (CIFAR-10 shards in ``../shared/data/cifar10``, 10,000 images each):

- backbone: ``small_cnn`` trained plainly on shard 02 alone (8 epochs, AdamW lr 2e-3, batch 128),
  then frozen. Shard 02 only, not 02–03 as in the issue-4 table: the reference's clean set (shard 03)
  must be as new to the backbone as the pool is, or the reference would sit on features that were fit
  to its own images and look better than a user's reference ever does;
- clean set (the reference's data): shard 03 with its clean labels (10,000 images), or a small clean
  set of 2,000 or 3,000 images (200 / 300 per class, the first of each class in shard 03), written by
  this script as JPEG files plus a manifest under the work folder;
- pool: shards 00–01 (20,000 images) with 20 / 40 / 60 % symmetric or 40 % asymmetric injected noise
  (the project's own noise tools, seed 0); test set: shard 04;
- every model is a linear probe on the frozen backbone's cached features (``--linear-probe``, batch
  128, AdamW lr 1e-3): the reference on the clean set (20 epochs on 10,000 images; 100 on 2,000 and
  66 on 3,000, so every reference takes about the same number of steps), Grad-Mimic on the noisy pool
  (20 epochs, normed_proj, T = 1, unless the cell says otherwise);
- a second backbone (``SECOND_BACKBONE``): small_cnn from seed 1, 4 epochs on shard 02, with the 10k and
  2k references and the same four noise settings;
- mimic layers beyond the head need a backbone that moves: reference and model are then fine-tuned
  end to end from the backbone (2 epochs, AdamW lr 1e-4; reference on shard 03, model plainly on the
  noisy pool), and the model's checkpoint is scored by ``score --params head | <last block> | all``.

Every run goes through the real pipeline (``run_train`` / ``run_score``), so each is cached by its
run id: a rerun reuses every finished run and only recomputes what changed.
"""

from __future__ import annotations

import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ROOT.parent / "shared" / "data" / "cifar10"
POOL = f"wds:{SHARDS}/train-{{00..01}}.tar"
TEST = f"wds:{SHARDS}/train-04.tar"
CLEAN_SHARD = SHARDS / "train-03.tar"

#: (tag, rate, kind) of every noise setting
NOISES = [
    ("sym20", 0.2, "symmetric"),
    ("sym40", 0.4, "symmetric"),
    ("sym60", 0.6, "symmetric"),
    ("asym40", 0.4, "asymmetric"),
]
#: clean-set name -> number of clean images (None: the whole shard 03)
CLEAN_SETS = {"clean10k": None, "clean2k": 2000, "clean3k": 3000}
#: Stage-1 method / temperature cells, at 40 % symmetric noise with the 10k reference
METHOD_CELLS = [("proj", 1.0), ("cos", 1.0), ("normed_cos", 1.0), ("normed_proj", 1.0), ("normed_proj", 5.0)]
#: mimic-layer cells of the fine-tuned pair: name -> --params
LAST_BLOCK = "backbone.2.0.weight,backbone.2.1.weight,backbone.2.1.bias"
LAYER_CELLS = {"head": "head", "last block": LAST_BLOCK, "all": "all"}
PROBE_EPOCHS = 20

Say = Callable[[str], None]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


#: a second backbone (issue 25: is the split robust to the backbone?): small_cnn from another seed, trained
#: for half the epochs on the same shard 02; its runs live in a sub-folder of the study, for these clean sets
SECOND_BACKBONE = dict(folder="small_cnn-seed1-4ep", seed=1, epochs=4)
SECOND_BACKBONE_CLEAN_SETS = ("clean10k", "clean2k")


@dataclass
class Study:
    """Where the study's runs live and how they are made (``seed`` and ``backbone_epochs``: the backbone's
    plain training)."""

    work: Path
    seed: int = 0
    backbone_epochs: int = 8

    @property
    def backbone(self) -> Path:
        return self.work / "backbone.pt"

    def probe(self, **extra) -> dict:
        options = dict(
            init=str(self.backbone),
            linear_probe=True,
            epochs=PROBE_EPOCHS,
            batch_size=128,
            lr=1e-3,
            test_data=TEST,
            quiet=True,
        )
        options.update(extra)
        return options

    # ------------------------------------------------------------------ models
    def make_backbone(self) -> Path:
        from mimic_explorer.commands.options import TrainOptions
        from mimic_explorer.commands.train import run_train

        t0 = time.perf_counter()
        run_train(
            TrainOptions(
                f"wds:{SHARDS}/train-02.tar",
                "small_cnn",
                str(self.work / "backbone-run"),
                epochs=self.backbone_epochs,
                batch_size=128,
                lr=2e-3,
                test_data=TEST,
                save_model=str(self.backbone),
                quiet=True,
                seed=self.seed,
            ),
            log=say,
        )
        say(f"backbone ready ({time.perf_counter() - t0:.0f} s)")
        return self.backbone

    def clean_spec(self, name: str) -> str:
        count = CLEAN_SETS[name]
        return f"wds:{CLEAN_SHARD}" if count is None else f"manifest:{small_clean_manifest(self.work, count)}"

    def reference(self, name: str) -> Path:
        """The linear-probe reference trained on clean set ``name``; its checkpoint path."""
        from mimic_explorer.commands.options import TrainOptions
        from mimic_explorer.commands.train import run_train

        count = CLEAN_SETS[name] or 10_000
        path = self.work / f"reference-{name}.pt"
        run_train(
            TrainOptions(
                self.clean_spec(name),
                "small_cnn",
                str(self.work / f"reference-{name}-run"),
                save_model=str(path),
                **self.probe(epochs=PROBE_EPOCHS * 10_000 // count),
            ),
            log=say,
        )
        return path

    def grad_mimic(
        self,
        noise: tuple[str, float, str],
        clean: str = "clean10k",
        method: str = "normed_proj",
        temperature: float = 1.0,
    ) -> Path:
        """A Grad-Mimic linear-probe run on the noisy pool; its run directory."""
        from mimic_explorer.commands.options import TrainOptions
        from mimic_explorer.commands.train import run_train

        tag, rate, kind = noise
        out = self.work / f"gm-{tag}-{clean}-{method}-T{temperature:g}"
        run_train(
            TrainOptions(
                POOL,
                "small_cnn",
                str(out),
                reference=str(self.reference(clean)),
                label_noise=rate,
                noise_type=kind,
                method=method,
                temperature=temperature,
                **self.probe(),
            ),
            log=say,
        )
        return out

    def fine_tuned(self, noise: tuple[str, float, str] | None) -> Path:
        """End-to-end fine-tune from the backbone: the reference (``noise`` None, clean shard 03) or a
        plain model on the noisy pool. Returns the checkpoint."""
        from mimic_explorer.commands.options import TrainOptions
        from mimic_explorer.commands.train import run_train

        name = "reference" if noise is None else f"model-{noise[0]}"
        path = self.work / f"ft-{name}.pt"
        extra = {} if noise is None else dict(label_noise=noise[1], noise_type=noise[2])
        data = f"wds:{CLEAN_SHARD}" if noise is None else POOL
        run_train(
            TrainOptions(
                data,
                "small_cnn",
                str(self.work / f"ft-{name}-run"),
                init=str(self.backbone),
                epochs=2,
                batch_size=128,
                lr=1e-4,
                test_data=TEST,
                save_model=str(path),
                quiet=True,
                **extra,
            ),
            log=say,
        )
        return path

    def layer_score(self, noise: tuple[str, float, str], cell: str) -> Path:
        """``score`` of the fine-tuned noisy-pool model against the fine-tuned reference, mimic layers ``cell``."""
        from mimic_explorer.commands.options import ScoreOptions
        from mimic_explorer.commands.score import run_score

        model, reference = self.fine_tuned(noise), self.fine_tuned(None)
        out = self.work / f"layers-{noise[0]}-{cell.replace(' + ', '+').replace(' ', '_')}"
        run_score(
            ScoreOptions(
                POOL,
                "small_cnn",
                str(out),
                init=str(self.backbone),
                model=str(model),
                reference=str(reference),
                label_noise=noise[1],
                noise_type=noise[2],
                params=LAYER_CELLS[cell],
                score_method="proj",
                binarisation="proj",
                batch_size=256,
                quiet=True,
            ),
            log=say,
        )
        return out


def small_clean_manifest(work: Path, count: int) -> Path:
    """``count`` clean images of shard 03 (count/10 per class, in shard order) as JPEG files and a
    manifest (``path``, ``label``, ``sample_id``) with ``classes.txt`` beside it. Written once."""
    folder = work / f"clean-{count}"
    manifest = folder / "manifest.csv"
    if manifest.exists():
        return manifest
    per_class = count // 10
    images, labels = {}, {}
    with tarfile.open(CLEAN_SHARD) as tar:
        for member in tar:
            key, _, ext = member.name.rpartition(".")
            if ext in ("jpg", "cls"):
                data = tar.extractfile(member).read()
                (images if ext == "jpg" else labels)[key] = data if ext == "jpg" else int(data.decode().strip())
    taken: dict[int, int] = {}
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for key, image in images.items():
        label = labels.get(key)
        if label is None or taken.get(label, 0) >= per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        (folder / "images" / f"{key}.jpg").write_bytes(image)
        rows.append(f"images/{key}.jpg,{label},{key}")
    (folder / "classes.txt").write_text((SHARDS / "classes.txt").read_text())
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("path,label,sample_id\n" + "\n".join(rows) + "\n")
    tmp.replace(manifest)
    return manifest
