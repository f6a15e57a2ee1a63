"""Tasks: what differs between labelled images and image-text pairs, so the commands need not ask.

``task_for(source)`` picks the task by the pool's kind (``data.captions.pool_kind``); the task and its
modes are described in ``tasks.base`` and the task × mode table in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from mimic_explorer.data.captions import PAIRS
from mimic_explorer.data.source import Source
from mimic_explorer.tasks.base import Task
from mimic_explorer.tasks.labelled import LabelledTask
from mimic_explorer.tasks.pairs import PairsTask


def task_for(source: Source) -> Task:
    """The task of a pool: image-text pairs when its samples carry captions, else labelled images.

    The one place that reads the pool's kind: the commands ask the task, never the modality.

    Parameters
    ----------
    source
        The opened pool (``data.specs.open_source``).

    Returns
    -------
    Task
        ``PairsTask()`` or ``LabelledTask()``.
    """
    return PairsTask() if source.pool_kind == PAIRS else LabelledTask()
