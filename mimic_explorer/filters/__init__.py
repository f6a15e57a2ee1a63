"""Filters: frames in, frames out (pandas/numpy, no files).

- ``rules``: threshold rules → keep mask (``FilterRule``, ``CompoundRule``, ``apply_rule``);
- ``formats``: what a keep-list holds in each format (csv, json, parquet, npy, DataComp uids);
- ``spec``: the reproducible filter spec (build, validate, verify; ``hashing`` and ``spec_edits``
  are its parts).

Writing keep-lists and specs to disk (atomically, as a pair, streamed from the app index) is
``store/filter_files.py`` and ``store/keep_list_stream.py``. See docs/ARCHITECTURE.md.
"""

from mimic_explorer.filters.formats import FORMATS, datacomp_uids, render_export
from mimic_explorer.filters.rules import (
    CompoundRule,
    FilterError,
    FilterResult,
    FilterRule,
    Rule,
    all_of,
    apply_rule,
    describe,
)
from mimic_explorer.filters.spec import SpecError, build_spec, rule_from_spec, rule_in_spec

__all__ = [
    "FORMATS",
    "CompoundRule",
    "FilterError",
    "FilterResult",
    "FilterRule",
    "Rule",
    "SpecError",
    "all_of",
    "apply_rule",
    "build_spec",
    "datacomp_uids",
    "describe",
    "render_export",
    "rule_from_spec",
    "rule_in_spec",
]
