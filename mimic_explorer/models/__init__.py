"""Model architectures, head discovery and checkpoint loading."""

from mimic_explorer.models.heads import find_head
from mimic_explorer.models.small import MLP, SmallCNN

__all__ = ["MLP", "SmallCNN", "find_head"]
