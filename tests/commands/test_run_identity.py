"""``commands/run_identity``: whether an ``--out`` directory is reused, resumed or refused is decided by
rank 0 alone and broadcast, so every rank of a distributed run acts on the same answer."""

from __future__ import annotations

import pytest

from mimic_explorer.commands.run_identity import agree_on_reuse
from mimic_explorer.store.atomic import write_json


class _Rank:
    """A stand-in for one process of a distributed run: what rank 0 broadcasts is ``said``."""

    def __init__(self, rank: int, said=None):
        self.active, self.rank, self.is_main, self.said, self.sent = True, rank, rank == 0, said, None

    def broadcast_object(self, value):
        if self.is_main:
            self.sent = value
            return value
        return self.said


def test_only_rank_0_decides_reuse_and_every_rank_gets_its_answer(tmp_path):
    """A slower rank must not read the run directory itself: rank 0 may already be writing it (a race
    once made rank 1 refuse the run rank 0 had just started)."""
    out = tmp_path / "run"
    out.mkdir()
    write_json(out / "meta.json", {"status": "running", "run_id": None})  # rank 0's run in the making
    main = _Rank(0)
    with pytest.raises(ValueError, match="different run"):
        agree_on_reuse(main, out, "train-abc", False, lambda text: None)
    assert main.sent[0] == "refused"
    # the other ranks follow rank 0, whatever the directory shows them
    assert agree_on_reuse(_Rank(1, ("ok", ("absent", None))), out, "train-abc", False, lambda text: None) == (
        "absent",
        None,
    )
    with pytest.raises(ValueError, match="holds a different run"):
        agree_on_reuse(_Rank(1, main.sent), out, "train-abc", False, lambda text: None)
    write_json(out / "meta.json", {"status": "complete", "run_id": "train-abc", "summary": {"samples": 3}})
    main = _Rank(0)
    assert agree_on_reuse(main, out, "train-abc", False, lambda text: None) == ("complete", {"samples": 3})
    assert main.sent == ("ok", ("complete", {"samples": 3}))
