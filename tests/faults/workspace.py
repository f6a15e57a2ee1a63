"""The pools and checkpoints the fault tests run their commands on, each pool with one bad sample."""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness import Zygote

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
QUIET_CPU = ["--device", "cpu", "--workers", "0", "--quiet"]
SEEDS = ["--seed", "0", "--noise-seed", "0"]
#: bytes no image decoder reads: the bad sample every pool of the suite holds
NOT_AN_IMAGE = b"\xff\xd8\xff\xe0 this is not a jpeg " * 8


def labelled_pool(folder: Path) -> Path:
    """``tests/fixtures/cifar_mini`` (30 images) plus one file that is not an image."""
    shutil.copytree(FIXTURES / "cifar_mini", folder)
    (folder / "bird" / "train_bird_broken.jpg").write_bytes(NOT_AN_IMAGE)
    return folder


def pairs_pool(path: Path) -> Path:
    """``tests/fixtures/flickr_mini/pairs.tar`` (24 pairs) plus one pair whose image is not an image."""
    shutil.copy(FIXTURES / "flickr_mini" / "pairs.tar", path)
    uid = "0" * 31 + "1"
    with tarfile.open(path, "a") as tar:
        for name, data in (
            (f"{uid}.jpg", NOT_AN_IMAGE),
            (f"{uid}.txt", b"a photo that cannot be decoded"),
            (f"{uid}.json", b'{"uid": "%s"}' % uid.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@dataclass
class Workspace:
    """Pools with a bad sample each, the checkpoints the commands need, and the arguments of each command."""

    root: Path
    zygote: Zygote

    @property
    def cifar(self) -> str:
        return f"folder:{self.root / 'cifar'}"

    @property
    def pairs(self) -> str:
        return f"wds:{self.root / 'pairs.tar'}"

    def file(self, name: str) -> str:
        return str(self.root / name)

    @property
    def labelled(self) -> list[str]:
        return ["--data", self.cifar, "--arch", "small_cnn", "--batch-size", "8", *SEEDS, *QUIET_CPU]

    @property
    def paired(self) -> list[str]:
        return ["--data", self.pairs, "--arch", "small_dual", "--batch-size", "8", *SEEDS, *QUIET_CPU]

    def make(self, name: str, argv: list[str]) -> None:
        result = self.zygote.cli(
            [*argv, "--out", self.root / "setup" / name], env={"MIMIC_EXPLORER_CACHE": self.root / "setup-cache"}
        )
        assert result.rc == 0, f"{name}: {result.stderr[-3000:]}"


def make_workspace(root: Path, zygote: Zygote) -> Workspace:
    """Pools and checkpoints: a plain small CNN (the backbone), a linear-probe and a fine-tune reference
    trained from it on clean labels, a dual encoder whose text side was trained on every caption (the
    pairs reference, P.pt) and a Grad-Mimic projection probe from it (the pairs model, M.pt) — the
    protocol of tests/golden, on pools that each hold one bad sample."""
    space = Workspace(root, zygote)
    labelled_pool(space.root / "cifar")
    pairs_pool(space.root / "pairs.tar")
    train = ["train", "--epochs", "2", "--checkpoint-every", "0"]
    space.make("base", [*train, *space.labelled, "--save-model", space.file("base.pt")])
    space.make(
        "probe_ref",
        [
            *train,
            *space.labelled,
            "--init",
            space.file("base.pt"),
            "--linear-probe",
            "--save-model",
            space.file("probe_ref.pt"),
        ],
    )
    space.make(
        "ft_ref", [*train, *space.labelled, "--init", space.file("base.pt"), "--save-model", space.file("ft_ref.pt")]
    )
    space.make(
        "pairs_ref",
        [*train, *space.paired, "--frozen-image-tower", "--all-captions", "--save-model", space.file("P.pt")],
    )
    space.make(
        "pairs_model",
        [
            *train,
            *space.paired,
            "--frozen-towers",
            "--reference",
            space.file("P.pt"),
            "--caption-noise",
            "0.3",
            "--save-model",
            space.file("M.pt"),
        ],
    )
    return space
