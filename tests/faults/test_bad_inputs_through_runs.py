"""The bad-input corpus through whole runs: each bad pool goes through a real ``train`` and a real
``score`` (tests/data/test_bad_inputs.py checks the same cases at the source), and the run says what
it lost where a user looks — ``errors.parquet``, ``meta.json``'s warnings, a WARNING line — while every
other sample keeps its label.

- a manifest with one ``NaN`` label: that row is a bad sample, every other label keeps its number
  (``"10"`` stays class 10, not the third name in text order);
- a shard cut inside a member's data: every complete sample is used, and the shard and the byte where
  it ends are listed in ``errors.parquet`` and in a warning;
- a manifest row pointing at a FIFO, or at ``/dev/zero``: a bad sample at once, the run done in
  seconds (each command runs in a process of its own with a timeout: a hang fails the test).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from tests.faults.harness import Result, Zygote
from tests.faults.workspace import FIXTURES, QUIET_CPU

pytestmark = pytest.mark.slow

PHOTOS = sorted((FIXTURES / "cifar_mini").glob("*/*.jpg"))
CLASSES = (FIXTURES / "cifar_mini" / "classes.txt").read_text().split()
#: the manifests' labels: 0..10, so "10" and "2" are where a text sort of the column would renumber
LABELS = [k % 11 for k in range(30)]
BAD_ROW = 5
#: seconds a run of 30 tiny images may take here, however loaded the machine: a hang fails
TIMEOUT = 90
NOT_REGULAR = {
    "fifo": "is a FIFO (named pipe), not a regular file",
    "dev-zero": "is a character device, not a regular file",
}


def manifest(folder: Path, labels: list, paths: dict[int, str] | None = None) -> str:
    """A CSV manifest of real photos, row k sample ``s{k}`` with ``labels[k]``; ``paths`` replaces some."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [str(PHOTOS[k % len(PHOTOS)]) for k in range(len(labels))]
    for k, path in (paths or {}).items():
        rows[k] = path
    frame = pd.DataFrame({"path": rows, "label": labels, "sample_id": [f"s{k}" for k in range(len(labels))]})
    frame.to_csv(folder / "m.csv", index=False)
    return f"manifest:{folder / 'm.csv'}"


def run(zygote: Zygote, argv: list, cache: Path) -> Result:
    result = zygote.cli(argv, env={"MIMIC_EXPLORER_CACHE": cache}, timeout=TIMEOUT)
    assert result.rc is not None, f"mimic-explorer {argv[0]} did not finish in {TIMEOUT} s"
    assert result.rc == 0, result.stderr[-3000:]
    return result


def train_and_score(zygote: Zygote, spec: str, model: Path, reference: Path, folder: Path) -> dict[str, Path]:
    """A plain one-epoch ``train`` and a ``score`` of ``model`` against ``reference`` on the pool ``spec``."""
    common = ["--data", spec, "--arch", "small_cnn", "--batch-size", "8", "--seed", "0", *QUIET_CPU]
    runs = {"train": folder / "train", "score": folder / "score"}
    run(
        zygote, ["train", *common, "--epochs", "1", "--checkpoint-every", "0", "--out", runs["train"]], folder / "cache"
    )
    run(
        zygote,
        ["score", *common, "--model", model, "--reference", reference, "--params", "all", "--out", runs["score"]],
        folder / "cache",
    )
    return runs


@pytest.fixture(scope="module")
def eleven_classes(tmp_path_factory, zygote) -> tuple[Path, Path]:
    """(model, reference) for the manifests' 11 classes: a plain run, and one more epoch from it."""
    root = tmp_path_factory.mktemp("eleven")
    spec = manifest(root / "clean", LABELS)
    common = [
        "train",
        "--data",
        spec,
        "--arch",
        "small_cnn",
        "--batch-size",
        "8",
        "--seed",
        "0",
        "--epochs",
        "1",
        "--checkpoint-every",
        "0",
        *QUIET_CPU,
    ]
    run(zygote, [*common, "--save-model", root / "m.pt", "--out", root / "m"], root / "cache")
    run(zygote, [*common, "--init", root / "m.pt", "--save-model", root / "r.pt", "--out", root / "r"], root / "cache")
    return root / "m.pt", root / "r.pt"


def errors_of(run_dir: Path) -> dict[str, tuple[str, str]]:
    frame = pd.read_parquet(run_dir / "errors.parquet")
    return {s: (p, r) for s, p, r in zip(frame["sample_id"], frame["path"], frame["reason"], strict=True)}


def test_a_nan_label_is_one_bad_sample_and_every_other_label_keeps_its_number(eleven_classes, zygote, tmp_path):
    labels = [str(v) for v in LABELS]
    labels[BAD_ROW] = "nan"
    runs = train_and_score(zygote, manifest(tmp_path / "pool", labels), *eleven_classes, tmp_path)
    for command, run_dir in runs.items():
        samples = pd.read_parquet(run_dir / "samples.parquet")
        kept = [k for k in range(30) if k != BAD_ROW]
        assert samples["sample_id"].tolist() == [f"s{k}" for k in kept], command
        assert samples["label"].tolist() == [LABELS[k] for k in kept], command  # "10" is 10, "2" is 2
        assert json.loads((run_dir / "meta.json").read_text())["class_names"] == [str(k) for k in range(11)]
        reason = f"label 'nan' in row {BAD_ROW + 1} is not an integer class index (the label column holds integers)"
        assert {s: r for s, (_, r) in errors_of(run_dir).items()} == {f"s{BAD_ROW}": reason}, command


def test_a_shard_cut_inside_a_members_data_lists_the_shard_and_where_it_ends(workspace, zygote, tmp_path):
    shard = tmp_path / "pool" / "pool-00.tar"
    shard.parent.mkdir()
    (shard.parent / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with tarfile.open(shard, "w") as tar:
        for photo in PHOTOS:
            for name, data in (
                (f"{photo.stem}.jpg", photo.read_bytes()),
                (f"{photo.stem}.cls", str(CLASSES.index(photo.parent.name)).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with tarfile.open(shard) as tar:
        image = tar.getmembers()[30]  # sample 15's photo
    shard.write_bytes(shard.read_bytes()[: image.offset_data + 100])
    runs = train_and_score(
        zygote, f"wds:{shard}", Path(workspace.file("base.pt")), Path(workspace.file("ft_ref.pt")), tmp_path
    )
    where = f"{shard}@{image.offset}"
    for command, run_dir in runs.items():
        assert pd.read_parquet(run_dir / "samples.parquet")["sample_id"].tolist() == [p.stem for p in PHOTOS[:15]]
        errors = errors_of(run_dir)
        assert set(errors) == {where, PHOTOS[15].stem}, command
        assert errors[where][0] == str(shard)
        assert errors[where][1].startswith(
            f"truncated shard: stops at byte {image.offset} of {image.offset_data + 100}: "
            f"member {image.name} is cut off"
        ), errors[where]
        warnings = json.loads((run_dir / "meta.json").read_text())["warnings"]
        assert [w for w in warnings if w.startswith(f"TRUNCATED SHARD: {shard} stops at byte {image.offset} ")], (
            warnings
        )
        log = (run_dir / "run.log").read_text()
        assert f"WARNING: TRUNCATED SHARD: {shard} stops at byte {image.offset} " in log, command


def test_the_cli_prints_the_truncated_shard_as_a_warning_line(workspace, zygote, tmp_path):
    """What the terminal shows: one WARNING line naming the shard and the byte (checked on a cut ``score``)."""
    shard = tmp_path / "pool-00.tar"
    source = FIXTURES / "flickr_mini" / "pairs.tar"
    with tarfile.open(source) as tar:
        member = tar.getmembers()[30]
    shard.write_bytes(source.read_bytes()[: member.offset_data + 10])
    result = run(
        zygote,
        [
            "score",
            "--data",
            f"wds:{shard}",
            "--arch",
            "small_dual",
            "--batch-size",
            "8",
            *QUIET_CPU,
            "--model",
            workspace.file("M.pt"),
            "--reference",
            workspace.file("P.pt"),
            "--out",
            tmp_path / "run",
        ],
        tmp_path / "cache",
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("WARNING: TRUNCATED SHARD:")]
    assert len(lines) == 1 and f"{shard} stops at byte {member.offset} " in lines[0], result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs FIFOs and /dev/zero")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_row_pointing_at_a_fifo_or_dev_zero_is_a_bad_sample_at_once(kind, eleven_classes, zygote, tmp_path):
    if kind == "fifo":
        path = tmp_path / "pipe.jpg"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    runs = train_and_score(zygote, manifest(tmp_path / "pool", LABELS, {BAD_ROW: str(path)}), *eleven_classes, tmp_path)
    for command, run_dir in runs.items():
        assert json.loads((run_dir / "meta.json").read_text())["status"] == "complete"
        assert errors_of(run_dir) == {f"s{BAD_ROW}": (str(path), NOT_REGULAR[kind])}, command
        assert len(pd.read_parquet(run_dir / "samples.parquet")) == 29, command
