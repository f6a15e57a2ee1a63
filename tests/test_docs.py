"""The user documentation stays honest: README.md and docs/guide/*.md against the code and CI.

Why: the README is the entry point (kept short, its two set-up commands fixed) and the guide pages
quote command lines a reader will paste. A renamed option, a moved page or a CI script that drifts
from the README's test command would otherwise only be found by a confused user. The flags are read
from the real parser (``mimic_explorer.cli.build_parser``), never from a list kept here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from mimic_explorer.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"
CI_SCRIPT = ROOT / ".ci" / "run"
MAX_README_LINES = 150
#: the README's two set-up commands, unchanged (the app; the tests, which CI runs)
APP_COMMAND = "pip install -e . && panel serve mimic_explorer/app.py --address localhost --show"
TEST_COMMAND = 'pip install -e ".[dev]" && python -m pytest'
#: options of other tools that the docs show beside ours (panel serve, torchrun)
OTHER_TOOLS_FLAGS = {"--args", "--standalone", "--nproc_per_node", "--nnodes", "--rdzv_backend", "--rdzv_endpoint"}
#: inline code that starts with one of these runs another program, whose flags are its own
OTHER_PROGRAMS = ("python", "python3", "pip", "apt-get")

FENCE = re.compile(r"^```")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*")
#: ``mimic-explorer CMD`` or ``-m mimic_explorer CMD`` (python -m, torchrun -m)
COMMAND = re.compile(r"(?:\bmimic-explorer|-m\s+mimic_explorer)\s+([A-Za-z_]+)")


def doc_files() -> list[Path]:
    return [README, *sorted(GUIDE.glob("*.md"))]


def split_fences(text: str) -> tuple[list[str], list[list[str]]]:
    """(lines outside fenced code blocks, the fenced blocks' lines)."""
    prose, blocks, current = [], [], None
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is None:
            prose.append(line)
        else:
            current.append(line)
    assert current is None, "a fenced code block is never closed"
    return prose, blocks


def logical_lines(block: list[str]) -> list[str]:
    """A code block's commands: comments dropped, and a line joined to the one before when that one
    ends with a backslash or this one is indented (a synopsis wrapped over several lines)."""
    joined: list[str] = []
    continues = False
    for raw in block:
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continues = False
            continue
        if joined and (continues or raw[:1].isspace()):
            joined[-1] += " " + line.strip().removesuffix("\\")
        else:
            joined.append(line.strip().removesuffix("\\"))
        continues = line.endswith("\\")
    return joined


def parser_flags() -> dict[str, set[str]]:
    """Each subcommand's option strings, from the real parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


def command_uses(text: str, commands: set[str]) -> list[tuple[str, str]]:
    """(command, flag) for every flag shown after ``mimic-explorer COMMAND`` in ``text`` (shell
    separators end a command; flags before the command belong to other tools, e.g. torchrun). An
    upper-case command is a placeholder (``mimic-explorer COMMAND --help``) and is skipped."""
    uses = []
    for segment in re.split(r"&&|;", text):
        match = COMMAND.search(segment)
        if match is None or match.group(1).isupper():
            continue
        uses += [(match.group(1), flag) for flag in FLAG.findall(segment[match.end() :])]
    return uses


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for line in prose:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_readme_is_at_most_150_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/guide/"


def test_readme_keeps_its_two_set_up_commands():
    _, blocks = split_fences(README.read_text(encoding="utf-8"))
    code = [line.strip() for block in blocks for line in block]
    assert APP_COMMAND in code
    assert TEST_COMMAND in code


def test_ci_runs_exactly_the_readmes_test_command():
    _, blocks = split_fences(README.read_text(encoding="utf-8"))
    readme_test = [
        line.strip()
        for block in blocks
        for line in block
        if line.strip().startswith("pip install") and "python -m pytest" in line
    ]
    assert len(readme_test) == 1, f"README should show one test command, found {readme_test}"
    ci_lines = [
        line.strip()
        for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    ci_test = [line for line in ci_lines if "python -m pytest" in line]
    assert ci_test == readme_test, f".ci/run runs {ci_test}, README shows {readme_test}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(path):
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    links = [target for line in prose for target in LINK.findall(line)]
    broken = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{path.name}: broken links: {broken}"


def test_every_guide_page_is_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    pages = sorted(GUIDE.glob("*.md"))
    assert pages, "docs/guide/ holds no page"
    missing = [p.name for p in pages if f"docs/guide/{p.name}" not in text]
    assert not missing, f"README links no {missing}"


def test_every_flag_shown_with_a_command_is_one_its_parser_has():
    flags = parser_flags()
    checked, unknown = 0, []
    for path in doc_files():
        prose, blocks = split_fences(path.read_text(encoding="utf-8"))
        texts = [line for block in blocks for line in logical_lines(block)]
        spans = [span for line in prose for span in INLINE_CODE.findall(line)]
        # inline code may name the command alone: `score --model M.pt`, `export --rule …`
        texts += [
            f"mimic-explorer {span}" if span.split(" ", 1)[0] in flags and " --" in span else span for span in spans
        ]
        for text in texts:
            for command, flag in command_uses(text, set(flags)):
                checked += 1
                if command not in flags:
                    unknown.append(f"{path.name}: no command {command!r} ({text})")
                elif flag not in flags[command]:
                    unknown.append(f"{path.name}: {command} has no {flag} ({text[:100]})")
    assert checked > 100, f"only {checked} flags found: is the command pattern still matching the docs?"
    assert not unknown, "\n".join(unknown)


def test_every_flag_in_inline_code_exists_somewhere():
    """A flag named alone in the prose (`--frozen-towers`) must be an option of some command."""
    known = set().union(*parser_flags().values()) | OTHER_TOOLS_FLAGS
    unknown = []
    for path in doc_files():
        prose, _ = split_fences(path.read_text(encoding="utf-8"))
        for line in prose:
            for span in INLINE_CODE.findall(line):
                program = span.split(" ", 1)[0]
                if program in OTHER_PROGRAMS or program.endswith(".py"):  # e.g. `bench_pairs_flickr.py --towers`
                    continue
                unknown += [f"{path.name}: {flag} ({span})" for flag in FLAG.findall(span) if flag not in known]
    assert not unknown, "\n".join(unknown)


def test_the_checks_catch_what_they_are_for():
    """The parsing helpers find a wrong flag, skip other tools' flags, and resolve anchors."""
    flags = parser_flags()
    wrapped = logical_lines(
        [
            "torchrun --nproc_per_node=2 -m mimic_explorer score --data X \\",
            "    --no-such-flag 1   # a comment --nor-this",
        ]
    )
    uses = command_uses(wrapped[0], set(flags))
    assert uses == [("score", "--data"), ("score", "--no-such-flag")]
    assert "--no-such-flag" not in flags["score"] and "--data" in flags["score"]
    assert "--init" not in flags["score"] and "--init" in flags["train"]
    assert command_uses("mimic-explorer COMMAND --help", set(flags)) == []
    assert slug("Image–text pairs: scoring (issue 14)") == "imagetext-pairs-scoring-issue-14"


def test_the_notebook_is_saved_with_its_outputs_and_its_pictures_are_static_pngs():
    """A reader on GitHub sees what the notebook shows without running it: every code cell ran, in order,
    and the plots are PNG images (the explorer itself needs a live kernel; tests/e2e/test_notebook.py runs it)."""
    import json

    cells = [
        c for c in json.loads((ROOT / "notebooks" / "explore.ipynb").read_text())["cells"] if c["cell_type"] == "code"
    ]
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    assert not [c for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    pictures = [o for c in cells for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(pictures) == 4
