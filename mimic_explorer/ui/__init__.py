"""Panel components for exploring runs. Reads run directories only; never imports torch."""

from mimic_explorer.ui.explorer import Explorer

__all__ = ["Explorer"]
