"""Panel components for exploring runs. Reads run directories only; never imports torch.

``Explorer`` is the whole app for one run (``Explorer(path)`` inline in Jupyter); its parts —
``Summary``, ``Gallery``, ``DetailView``, ``RunPicker`` — are usable on their own. UI-free logic lives
in ``state``, ``counting``, ``runs`` and ``summary`` (functions), views in the rest.
"""

from mimic_explorer.ui.detail import DetailView
from mimic_explorer.ui.explorer import Explorer
from mimic_explorer.ui.gallery import Gallery
from mimic_explorer.ui.page import ExplorerPage
from mimic_explorer.ui.runs import RunPicker
from mimic_explorer.ui.summary import Summary

__all__ = ["DetailView", "Explorer", "ExplorerPage", "Gallery", "RunPicker", "Summary"]
