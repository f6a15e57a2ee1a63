"""The command line's own behaviour, through ``main([...])``.

``mimic-explorer COMMAND --help`` shows each option's default once: in the option's own words when
its help already speaks of the default, else one ``(default: X)``; never for options without a
default (``None``) or for flags. Every user-caused error is one line ``error: ...`` on stderr with
exit status 2, before any work: ``--out`` onto a file or in a read-only place (train, score, demo,
export), ``--save-model`` onto a folder, a ``meta.json`` that cannot be read (``runs`` lists the rest),
a ``format_version`` that is not a version or is newer, a port already in use."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from mimic_explorer.cli import build_parser, main
from tests.ui_helpers import synthetic_run


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as printed (wrapping undone)."""
    formatter = parser._get_formatter()
    return {
        a.option_strings[-1]: " ".join(formatter._expand_help(a).split())
        for a in parser._actions
        if a.option_strings and a.help
    }


@pytest.mark.parametrize("command", ["demo", "train", "score", "export", "runs", "serve"])
def test_every_default_is_shown_once(command):
    parser = _subcommands()[command]
    text = " ".join(parser.format_help().split())
    assert "(default: None)" not in text and "(default: False)" not in text
    for option, help_text in _option_help(parser).items():
        action = next(a for a in parser._actions if option in a.option_strings)
        shown = len(re.findall(r"\(default\b", help_text))
        has_default = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        in_own_words = len(re.findall(r"\(default\b", action.help))
        assert shown == (1 if has_default else in_own_words) and in_own_words <= 1, (command, option, help_text)


def test_train_and_score_show_their_own_words_or_the_value():
    train = _option_help(_subcommands()["train"])
    assert train["--batch-size"] == "mini-batch size per process (default: 128)"
    assert train["--label-noise"].endswith("(default 0: none)")
    assert train["--binarise"] == (
        "Stage-2 per-epoch vote (default weight (weight >= 1/B) on a labelled pool, gmm "
        "(two-group split of each epoch's proj) on image-text pairs)"
    )
    assert "default" not in train["--init"] and "default" not in train["--linear-probe"]
    score = _option_help(_subcommands()["score"])
    assert score["--binarise"] == "Stage-2 per-epoch vote (default proj: keep when proj >= 0)"
    assert score["--chunk-size"].endswith("(default: 8192)")


# ------------------------------------------------- user-caused errors: one line on stderr, exit status 2


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def read_only_folder(tmp_path):
    """An existing folder nobody may write into: permission bits, or (for root, whom they do not stop)
    a read-only tmpfs mounted over it where this machine allows mounting."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        yield folder
        folder.chmod(0o755)
        return
    folder.chmod(0o755)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("this user can write anywhere and cannot mount a read-only folder")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


def _command(name: str, out: Path, tmp_path: Path) -> list[str]:
    """The cheapest form of each run-making command (each is refused before it reads anything)."""
    return {
        "demo": ["demo", "--epochs", "1", "--quiet", "--out", str(out)],
        "train": ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--quiet", "--out", str(out)],
        "score": [
            "score",
            "--data",
            "digits",
            "--arch",
            "mlp",
            "--model",
            str(tmp_path / "m.pt"),
            "--reference",
            str(tmp_path / "r.pt"),
            "--quiet",
            "--out",
            str(out),
        ],
    }[name]


@pytest.mark.parametrize("command", ["demo", "train", "score"])
def test_out_onto_a_regular_file_is_one_line_and_the_file_is_kept(tmp_path, capsys, command):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert main(_command(command, target, tmp_path)) == 2
    assert _one_error_line(capsys) == f"error: {target} exists and is not a directory"
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["demo", "train", "score"])
def test_out_into_a_read_only_folder_is_one_line_before_any_work(read_only_folder, tmp_path, capsys, command):
    out = read_only_folder / "run"
    assert main(_command(command, out, tmp_path)) == 2
    err = _one_error_line(capsys)
    assert err == f"error: cannot create run directory {out}: {read_only_folder} is not writable"
    assert not out.exists()


@pytest.mark.parametrize("command", ["demo", "train"])
def test_out_that_is_a_read_only_folder_is_one_line(read_only_folder, tmp_path, capsys, command):
    assert main(_command(command, read_only_folder, tmp_path)) == 2
    assert _one_error_line(capsys) == f"error: run directory {read_only_folder} is not writable"
    assert list(read_only_folder.iterdir()) == []


def test_save_model_onto_a_folder_or_into_a_read_only_one_is_refused_before_training(
    read_only_folder, tmp_path, capsys
):
    out = tmp_path / "run"
    for target, reason in (
        (tmp_path, f"--save-model {tmp_path} is a directory; name a file"),
        (
            read_only_folder / "m.pt",
            (f"cannot write --save-model {read_only_folder / 'm.pt'}: {read_only_folder} is not writable"),
        ),
    ):
        assert main([*_command("train", out, tmp_path), "--save-model", str(target)]) == 2
        assert _one_error_line(capsys) == f"error: {reason}"
        assert not out.exists()


def test_export_out_onto_a_folder_or_into_a_read_only_one(read_only_folder, tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", n=50)
    assert main(["export", str(run), "--ensemble", "--format", "csv", "--out", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == f"error: --out {tmp_path} is a directory; name a file"
    out = read_only_folder / "keep.csv"
    assert main(["export", str(run), "--ensemble", "--out", str(out)]) == 2
    assert _one_error_line(capsys) == f"error: cannot write --out {out}: {read_only_folder} is not writable"


def _set_meta(run: Path, **fields) -> Path:
    meta = json.loads((run / "meta.json").read_text())
    meta.update(fields)
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def test_runs_lists_the_readable_runs_and_names_each_unreadable_one(tmp_path, capsys):
    synthetic_run(tmp_path / "good", n=50)
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "meta.json").write_text('{"status": "complete", ')
    (tmp_path / "project" / "wrong-kind").mkdir(parents=True)
    (tmp_path / "project" / "wrong-kind" / "meta.json").write_text('{"status": "complete", "summary": [1]}')
    assert main(["runs", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:]
    assert len(rows) == 3
    assert rows[0].split()[:2] == ["complete", "50"] and rows[0].endswith(str(tmp_path / "good"))
    assert {row.split()[0] for row in rows[1:]} == {"unreadable"}
    errors = sorted(err.strip().splitlines())
    assert errors == [
        (
            f"error: {tmp_path / 'project' / 'wrong-kind' / 'meta.json'} cannot be read: 'summary' should be an "
            "object, not a list ([1])"
        ),
        (
            f"error: {tmp_path / 'truncated' / 'meta.json'} cannot be read: Expecting property name enclosed in "
            "double quotes: line 1 column 24 (char 23)"
        ),
    ]


def test_runs_with_only_readable_runs_exits_0(tmp_path, capsys):
    synthetic_run(tmp_path / "good", n=50)
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_a_meta_format_version_that_is_not_a_version_is_one_line_naming_file_and_value(tmp_path, capsys):
    run = _set_meta(synthetic_run(tmp_path / "runs" / "run", n=50), format_version="9")
    keep = tmp_path / "keep.csv"
    assert main(["export", str(run), "--ensemble", "--out", str(keep)]) == 2
    assert _one_error_line(capsys) == (
        f'error: {run / "meta.json"} cannot be read: format_version "9" is not a '
        "format version (this mimic_explorer reads 0 to 1)"
    )
    assert not keep.exists()
    assert main(["runs", str(tmp_path / "runs")]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith("unreadable") and 'format_version "9"' in err


def test_a_meta_of_a_newer_format_is_one_line_on_open_and_listed_with_a_note(tmp_path, capsys):
    run = _set_meta(synthetic_run(tmp_path / "runs" / "run", n=50), format_version=9)
    assert main(["export", str(run), "--ensemble", "--out", str(tmp_path / "keep.csv")]) == 2
    assert _one_error_line(capsys) == (
        f"error: {run / 'meta.json'} is format 9, written by a newer mimic_explorer "
        "(this one reads formats up to 1); upgrade the package"
    )
    assert main(["runs", str(tmp_path / "runs")]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.startswith("complete") and row.endswith(
        "(format 9: written by a newer mimic_explorer, upgrade to open it)"
    )


def test_serve_refuses_a_port_in_use_before_starting_anything(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port), "--address", "127.0.0.1"]) == 2
    assert _one_error_line(capsys) == f"error: port {port} on 127.0.0.1 is already in use; pick another with --port"


def test_version_prints_the_packages_version(capsys):
    import tomllib

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    version = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"mimic-explorer {version}"


@pytest.mark.parametrize("command", ["demo", "train", "score"])
def test_threads_below_one_is_one_line_before_any_work(tmp_path, capsys, command):
    out = tmp_path / "run"
    assert main([*_command(command, out, tmp_path), "--threads", "0"]) == 2
    assert _one_error_line(capsys) == "error: --threads must be a whole number of threads >= 1, got 0"
    assert not out.exists()
