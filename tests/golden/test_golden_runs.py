"""Golden outputs of the ``train``, ``score`` and ``demo`` commands: each case runs one tiny real
command on the CPU (the committed fixtures: 30 CIFAR-10 images, 24 Flickr8k pairs) and compares its
samples, score rows and meta.json with the files under ``tests/golden/expected/<case>/`` — the same
command must keep giving the same run while the drivers behind it change (see README.md here).

The commands run through the command-line entry point only; checkpoints the cases share (a plain
run's weights as a backbone, references, a Grad-Mimic run's model) come from earlier cases' own
``--save-model`` and are made once per module. ``MIMIC_EXPLORER_UPDATE_GOLDEN=1`` rewrites the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.golden.golden import check_golden
from tests.golden.runner import QUIET_CPU, run_command

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CIFAR = f"folder:{FIXTURES / 'cifar_mini'}"
PAIRS = f"wds:{FIXTURES / 'flickr_mini' / 'pairs.tar'}"
SEEDS = ["--seed", "0", "--noise-seed", "0"]

LABELLED = ["--data", CIFAR, "--arch", "small_cnn", "--batch-size", "8", *SEEDS, *QUIET_CPU]
LABELLED_TRAIN = ["train", *LABELLED, "--epochs", "2", "--checkpoint-every", "0"]
PAIRED = ["--data", PAIRS, "--arch", "small_dual", "--batch-size", "8", *SEEDS, *QUIET_CPU]
PAIRED_TRAIN = ["train", *PAIRED, "--epochs", "2", "--checkpoint-every", "0"]


@dataclass
class Workspace:
    """The module's temporary folder: run directories and checkpoints by name, and the placeholders
    that stand for its path (and the fixtures') in the golden files."""

    root: Path

    def run(self, name: str, args: list[str]) -> Path:
        return run_command(args, self.root / name)

    def file(self, name: str) -> str:
        return str(self.root / name)

    def check(self, case: str, run_dir: Path) -> None:
        placeholders = {str(self.root): "<tmp>", str(self.root.resolve()): "<tmp>", str(FIXTURES): "<fixtures>"}
        check_golden(case, run_dir, placeholders)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMIC_EXPLORER_CACHE", str(root / "cache"))  # features and shard indexes of this module only
        yield Workspace(root)


# --- labelled pool: a plain run (the backbone), linear-probe and fine-tune references and Grad-Mimic runs


@pytest.fixture(scope="module")
def plain_run(workspace) -> Path:
    """Plain training from a seeded init; its weights are the 'pretrained' backbone of the other cases."""
    return workspace.run("train_plain", [*LABELLED_TRAIN, "--save-model", workspace.file("base.pt")])


@pytest.fixture(scope="module")
def probe_reference_run(workspace, plain_run) -> Path:
    """A linear probe on the backbone, trained on the clean labels: the reference of the probe cases."""
    return workspace.run(
        "train_linear_probe_plain",
        [
            *LABELLED_TRAIN,
            "--init",
            workspace.file("base.pt"),
            "--linear-probe",
            "--save-model",
            workspace.file("probe_ref.pt"),
        ],
    )


@pytest.fixture(scope="module")
def probe_grad_mimic_run(workspace, probe_reference_run) -> Path:
    return workspace.run(
        "train_linear_probe_grad_mimic",
        [
            *LABELLED_TRAIN,
            "--init",
            workspace.file("base.pt"),
            "--linear-probe",
            "--reference",
            workspace.file("probe_ref.pt"),
            "--label-noise",
            "0.3",
            "--save-model",
            workspace.file("probe_gm.pt"),
        ],
    )


@pytest.fixture(scope="module")
def finetune_reference_run(workspace, plain_run) -> Path:
    """The whole network fine-tuned from the backbone on the clean labels: the fine-tune cases' reference."""
    return workspace.run(
        "train_finetune_plain",
        [*LABELLED_TRAIN, "--init", workspace.file("base.pt"), "--save-model", workspace.file("ft_ref.pt")],
    )


@pytest.fixture(scope="module")
def finetune_grad_mimic_run(workspace, finetune_reference_run) -> Path:
    return workspace.run(
        "train_finetune_grad_mimic",
        [
            *LABELLED_TRAIN,
            "--init",
            workspace.file("base.pt"),
            "--reference",
            workspace.file("ft_ref.pt"),
            "--label-noise",
            "0.3",
            "--save-model",
            workspace.file("ft_gm.pt"),
        ],
    )


# --- image-text pairs: a small 'pretrained' dual encoder, Grad-Mimic in the three tower modes, score


@pytest.fixture(scope="module")
def pairs_pretrained_run(workspace) -> Path:
    """Plain training of the text tower and projections on every caption: the pairs cases' reference."""
    return workspace.run(
        "pairs_train_text_tower_plain",
        [*PAIRED_TRAIN, "--frozen-image-tower", "--all-captions", "--save-model", workspace.file("P.pt")],
    )


@pytest.fixture(scope="module")
def pairs_frozen_towers_run(workspace, pairs_pretrained_run) -> Path:
    """Grad-Mimic on the projections over frozen towers; the model starts from the reference with a fresh
    text projection (no --init)."""
    return workspace.run(
        "pairs_train_frozen_towers_grad_mimic",
        [
            *PAIRED_TRAIN,
            "--frozen-towers",
            "--reference",
            workspace.file("P.pt"),
            "--caption-noise",
            "0.3",
            "--save-model",
            workspace.file("M.pt"),
        ],
    )


@pytest.mark.slow  # the demo's reference always trains 30 epochs on 1,438 digits: seconds
def test_demo(workspace):
    workspace.check("demo", workspace.run("demo", ["demo", "--epochs", "3", "--seed", "0", "--quiet"]))


def test_train_plain(workspace, plain_run):
    workspace.check("train_plain", plain_run)


def test_train_linear_probe_plain(workspace, probe_reference_run):
    workspace.check("train_linear_probe_plain", probe_reference_run)


def test_train_linear_probe_grad_mimic(workspace, probe_grad_mimic_run):
    workspace.check("train_linear_probe_grad_mimic", probe_grad_mimic_run)


def test_train_finetune_plain(workspace, finetune_reference_run):
    workspace.check("train_finetune_plain", finetune_reference_run)


def test_train_finetune_grad_mimic(workspace, finetune_grad_mimic_run):
    workspace.check("train_finetune_grad_mimic", finetune_grad_mimic_run)


def test_score_linear_probe(workspace, probe_grad_mimic_run):
    run = workspace.run(
        "score_linear_probe",
        [
            "score",
            *LABELLED,
            "--model",
            workspace.file("probe_gm.pt"),
            "--reference",
            workspace.file("probe_ref.pt"),
            "--linear-probe",
            "--label-noise",
            "0.3",
        ],
    )
    workspace.check("score_linear_probe", run)


def test_score_finetuned_all_params_cos(workspace, finetune_grad_mimic_run):
    run = workspace.run(
        "score_finetuned_all_params_cos",
        [
            "score",
            *LABELLED,
            "--model",
            workspace.file("ft_gm.pt"),
            "--reference",
            workspace.file("ft_ref.pt"),
            "--params",
            "all",
            "--method",
            "cos",
            "--label-noise",
            "0.3",
        ],
    )
    workspace.check("score_finetuned_all_params_cos", run)


def test_pairs_train_text_tower_plain(workspace, pairs_pretrained_run):
    workspace.check("pairs_train_text_tower_plain", pairs_pretrained_run)


def test_pairs_train_frozen_towers_grad_mimic(workspace, pairs_frozen_towers_run):
    workspace.check("pairs_train_frozen_towers_grad_mimic", pairs_frozen_towers_run)


def test_pairs_train_frozen_image_tower_grad_mimic(workspace, pairs_pretrained_run):
    run = workspace.run(
        "pairs_train_frozen_image_tower_grad_mimic",
        [*PAIRED_TRAIN, "--frozen-image-tower", "--reference", workspace.file("P.pt"), "--caption-noise", "0.3"],
    )
    workspace.check("pairs_train_frozen_image_tower_grad_mimic", run)


def test_pairs_train_both_towers_grad_mimic(workspace, pairs_pretrained_run):
    """Both towers learn: the streamed mode, each epoch's pairs decoded again."""
    run = workspace.run(
        "pairs_train_both_towers_grad_mimic",
        [*PAIRED_TRAIN, "--reference", workspace.file("P.pt"), "--mimic-layer", "image", "--caption-noise", "0.3"],
    )
    workspace.check("pairs_train_both_towers_grad_mimic", run)


def test_pairs_score(workspace, pairs_frozen_towers_run):
    run = workspace.run(
        "pairs_score",
        [
            "score",
            *PAIRED,
            "--model",
            workspace.file("M.pt"),
            "--reference",
            workspace.file("P.pt"),
            "--caption-noise",
            "0.3",
        ],
    )
    workspace.check("pairs_score", run)
