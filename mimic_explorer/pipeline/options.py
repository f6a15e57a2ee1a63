"""Options of the run-making commands (``train`` and ``score``), independent of argparse.

Why a dataclass: the CLI, torchrun workers, tests and benchmarks build runs from the same object, and
its identity-relevant fields (everything but where to write and how to report) define the run id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: fields that change how a run is made or reported but not what it computes
NON_IDENTITY = ("out", "force", "quiet", "save_model", "device", "workers", "trust_pickle", "chunk_size",
                "checkpoint_every")


@dataclass
class RunOptions:
    command: str  # "train" | "score"
    data: str
    arch: str
    out: str
    init: str | None = None
    reference: str | None = None
    model: str | None = None  # score: the fixed checkpoint to score
    linear_probe: bool = False
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    method: str = "normed_proj"
    temperature: float = 1.0
    reweight: str = "head"
    starting_epoch: int = 0
    reference_noise: float = 0.0
    label_noise: float = 0.0
    noise_type: str = "symmetric"  # or "asymmetric" (CIFAR-10 map)
    noise_seed: int = 0
    seed: int = 0
    test_data: str | None = None
    binarisation: str = "weight"
    aggregation: str = "majority"
    params: str = "head"  # score: "head" | "all" | comma-separated parameter names
    score_method: str = "proj"  # score: proj | cos
    chunk_size: int = 8192  # score: samples per part file (the unit of resuming)
    checkpoint_every: float = 10.0  # train: seconds between resumable checkpoints (0: after every epoch)
    device: str = "auto"
    workers: int = 0
    save_model: str | None = None
    trust_pickle: bool = False
    force: bool = False
    quiet: bool = False
    extra: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """The fields that determine the run's results."""
        return {k: v for k, v in asdict(self).items() if k not in NON_IDENTITY}

    def to_dict(self) -> dict:
        return asdict(self)
