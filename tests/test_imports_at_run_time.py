"""The import rules of docs/ARCHITECTURE.md seen at run time: what importing a module really loads, in a
fresh interpreter — compute code never loads panel, scoring loads no other layer than the head finder.
``tests/test_import_graph.py`` checks the import statements themselves (function-level ones
included); this file catches what a statement hides, such as a dependency that imports panel in its
turn. The other direction (the app never loads torch) is checked where the page is built:
``tests/ui/test_explorer.py::test_ui_and_page_building_never_import_torch``."""

from __future__ import annotations

import subprocess
import sys

COMPUTE = [
    "mimic_explorer.scoring",
    "mimic_explorer.data.specs",
    "mimic_explorer.models",
    "mimic_explorer.training.loop",
    "mimic_explorer.stage2.votes",
    "mimic_explorer.filters",
    "mimic_explorer.store",
    "mimic_explorer.store.filter_files",
    "mimic_explorer.commands.train",
    "mimic_explorer.commands.score",
    "mimic_explorer.commands.demo",
    "mimic_explorer.cli",
    "mimic_explorer.training.towers",
    "mimic_explorer.training.loss_step",
    "mimic_explorer.tasks",
    "mimic_explorer.tasks.pairs",
    "mimic_explorer.models.dual_checkpoint",
]


def _modules_after_import(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_compute_code_never_imports_panel():
    loaded = _modules_after_import(COMPUTE)
    assert "torch" in loaded  # the check can fail: these modules do pull in their own stack
    assert not {m for m in loaded if m == "panel" or m.startswith(("panel.", "bokeh", "holoviews"))}


def test_scoring_imports_no_other_layer_than_the_head_finder():
    loaded = _modules_after_import(["mimic_explorer.scoring"])
    ours = {m for m in loaded if m.startswith("mimic_explorer.") and not m.startswith("mimic_explorer.scoring")}
    assert ours <= {
        "mimic_explorer.models",
        "mimic_explorer.models.heads",
        "mimic_explorer.util",
        "mimic_explorer.util.choices",
    }, sorted(ours)
