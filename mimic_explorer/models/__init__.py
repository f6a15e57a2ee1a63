"""Model architectures, head discovery, checkpoint loading and ``build_for_run`` (what a run calls)."""

from mimic_explorer.models.build import BuiltModel, build_for_run
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.small import MLP, SmallCNN

__all__ = ["MLP", "BuiltModel", "SmallCNN", "build_for_run", "find_head"]
