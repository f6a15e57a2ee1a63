"""What ``train`` and ``score`` know before their run directory is touched: the pool, its task, the
models and their checks — or a one-line refusal, with nothing written."""

from __future__ import annotations

from typing import Any

from mimic_explorer.data.pool import open_pool
from mimic_explorer.data.sources import open_source
from mimic_explorer.tasks import task_for
from mimic_explorer.tasks.base import Job, Prepared


def prepare_job(options: Any, device: str, *, check_size: bool = False) -> Prepared[Job]:
    """Open ``--data``, let its task refuse the options it cannot use (before any noise is injected or
    model built), open the pool and have the task prepare the command's models.

    ``check_size``: refuse a batch larger than the pool (``train``: a batch must fit the data)."""
    source = open_source(options.data)
    task = task_for(source)
    task.check_options(options)
    pool = open_pool(options, source)
    if check_size and options.batch_size > len(pool.source):
        raise ValueError(f"--batch-size {options.batch_size} is larger than the dataset ({len(pool.source)} samples)")
    if options.command == "train":
        return task.prepare_train(options, pool, device)
    return task.prepare_score(options, pool, device)
