"""``mimic-explorer COMMAND --help`` shows each option's default once: in the option's own words when
its help already speaks of the default, else one ``(default: X)``; never for options without a
default (``None``) or for flags."""

from __future__ import annotations

import argparse
import re

import pytest

from mimic_explorer.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as printed (wrapping undone)."""
    formatter = parser._get_formatter()
    return {a.option_strings[-1]: " ".join(formatter._expand_help(a).split())
            for a in parser._actions if a.option_strings and a.help}


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
    assert train["--binarise"] == ("Stage-2 per-epoch vote (default weight (weight >= 1/B) on a labelled pool, gmm "
                                   "(two-group split of each epoch's proj) on image-text pairs)")
    assert "default" not in train["--init"] and "default" not in train["--linear-probe"]
    score = _option_help(_subcommands()["score"])
    assert score["--binarise"] == "Stage-2 per-epoch vote (default proj: keep when proj >= 0)"
    assert score["--chunk-size"].endswith("(default: 8192)")
