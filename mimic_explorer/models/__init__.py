"""Model architectures, head discovery, checkpoint loading, ``build_for_run`` (what a run calls) and
image-text dual encoders."""

from mimic_explorer.models.build import BuiltModel, build_for_run
from mimic_explorer.models.dual import DualEncoder, DualOutput, ProjectionProbe
from mimic_explorer.models.dual_registry import build_dual_encoder
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.small import MLP, SmallCNN

__all__ = ["BuiltModel", "DualEncoder", "DualOutput", "MLP", "ProjectionProbe", "SmallCNN", "build_dual_encoder",
           "build_for_run", "find_head"]
