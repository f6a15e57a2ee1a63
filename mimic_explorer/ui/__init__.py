"""Panel components for exploring runs. Reads run directories through ``store`` only; never imports torch.

``Explorer`` is the whole app for one run (``Explorer(path)`` inline in Jupyter), composed of
``FilterControls``, ``ExportPanel``, ``Distribution``, ``Galleries`` (with ``DetailView``) and
``MoreViews`` around one ``FilterModel`` and its ``LiveCounts``; ``Summary``, ``Gallery`` and
``RunPicker`` are usable on their own. UI-free logic lives in ``state``, ``counting``, ``live`` and
``filter_model`` (no panel there). See docs/ARCHITECTURE.md.
"""

from mimic_explorer.ui.controls import FilterControls
from mimic_explorer.ui.detail import DetailView
from mimic_explorer.ui.distribution import Distribution
from mimic_explorer.ui.explorer import Explorer
from mimic_explorer.ui.exports import ExportPanel
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.galleries import Galleries
from mimic_explorer.ui.gallery import Gallery
from mimic_explorer.ui.more_views import MoreViews
from mimic_explorer.ui.page import ExplorerPage
from mimic_explorer.ui.runs import RunPicker
from mimic_explorer.ui.summary import Summary

__all__ = [
    "DetailView",
    "Distribution",
    "Explorer",
    "ExplorerPage",
    "ExportPanel",
    "FilterControls",
    "FilterModel",
    "Galleries",
    "Gallery",
    "MoreViews",
    "RunPicker",
    "Summary",
]
