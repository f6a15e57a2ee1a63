"""Model architectures, head discovery, checkpoint loading, and image-text dual encoders."""

from mimic_explorer.models.dual import DualEncoder, DualOutput, ProjectionProbe
from mimic_explorer.models.dual_registry import build_dual_encoder
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.small import MLP, SmallCNN

__all__ = ["DualEncoder", "DualOutput", "MLP", "ProjectionProbe", "SmallCNN", "build_dual_encoder", "find_head"]
