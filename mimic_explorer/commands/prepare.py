"""What ``train`` and ``score`` know before their run directory is touched: the pool, its task, the
models and their checks — or a one-line refusal, with nothing written."""

from __future__ import annotations

from typing import Any

from mimic_explorer.data.pool import open_pool
from mimic_explorer.data.specs import open_source
from mimic_explorer.filters.spec import SpecError
from mimic_explorer.store.filter_files import pair_problem, read_spec_file
from mimic_explorer.store.layout import spec_beside
from mimic_explorer.tasks import task_for
from mimic_explorer.tasks.base import Given, Job, Prepared


def prepare_job(options: Any, device: str, *, check_size: bool = False, given: Given | None = None) -> Prepared[Job]:
    """Open ``--data``, let its task refuse the options it cannot use (before any noise is injected or
    model built), open the pool and have the task prepare the command's models.

    ``check_size``: refuse a batch larger than the pool (``train``: a batch must fit the data).
    ``given``: a pool or models a Python caller holds already, used in place of what the options name."""
    if options.subset:
        _check_subset_pair(options.subset)
    source = given.source if given is not None and given.source is not None else open_source(options.data)
    task = task_for(source)
    task.check_options(options)
    pool = open_pool(options, source)
    if check_size and options.batch_size > len(pool.source):
        raise ValueError(f"--batch-size {options.batch_size} is larger than the dataset ({len(pool.source)} samples)")
    if options.command == "train":
        return task.prepare_train(options, pool, device, given)
    return task.prepare_score(options, pool, device, given)


def _check_subset_pair(keep_list: str) -> None:
    """A ``--subset`` keep-list written by ``export`` must still be the one its spec (beside it)
    describes: a list edited or swapped after its spec was written is refused, naming why."""
    spec_path = spec_beside(keep_list)
    if not spec_path.is_file():
        return  # a keep-list from elsewhere (a DataComp subset, a hand-made list): nothing to check it against
    try:
        spec = read_spec_file(spec_path)
    except SpecError as exc:
        raise ValueError(f"--subset {keep_list}: its spec {spec_path} cannot be read: {exc}") from None
    problem = pair_problem(keep_list, spec)
    if problem is not None:
        raise ValueError(f"--subset {keep_list} does not match its spec {spec_path}: {problem}")
