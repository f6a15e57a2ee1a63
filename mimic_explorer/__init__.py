"""mimic_explorer: compute, explore and act on Grad-Mimic sample-utility (mimic) scores.

The top level stays light: ``mimic_scores``, ``score`` and ``train`` (need torch) and ``open_run``
(needs only pandas) are imported on first use, so the app can import this package without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "mimic_scores", "open_run", "score", "train"]

if TYPE_CHECKING:  # pragma: no cover
    from mimic_explorer.commands.python_api import score, train
    from mimic_explorer.scoring.api import mimic_scores
    from mimic_explorer.store.reader import open_run


def __getattr__(name: str) -> Any:
    if name == "mimic_scores":
        from mimic_explorer.scoring.api import mimic_scores

        return mimic_scores
    if name in ("score", "train"):
        from mimic_explorer.commands import python_api as api

        return getattr(api, name)
    if name == "open_run":
        from mimic_explorer.store.reader import open_run

        return open_run
    raise AttributeError(f"module 'mimic_explorer' has no attribute {name!r}")
