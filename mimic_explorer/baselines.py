"""Baseline signals shown beside the mimic score, each turned into a *utility* (higher = keep).

Why: users ask "is this better than just looking at the loss?". Each baseline's orientation is fixed
here once, so evaluation, the app and exports agree on it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: column -> sign that turns it into a utility (higher = more useful)
UTILITY_SIGN = {
    "mimic_score": +1.0,
    "reference_loss": -1.0,  # high loss under the better model: likely mislabeled
    "model_loss": -1.0,
    "reducible_loss": +1.0,  # RHO-LOSS: learnable and not yet learnt → worth training on
    "grand": -1.0,  # GraNd: large gradient norm late in training marks hard / noisy samples
    "proj_mean": +1.0,
    "proj_min": +1.0,
    "proj_last": +1.0,
}


def utility(samples: pd.DataFrame, column: str) -> np.ndarray:
    return UTILITY_SIGN[column] * samples[column].to_numpy(dtype=np.float64)


def available(samples: pd.DataFrame) -> list[str]:
    return [c for c in UTILITY_SIGN if c in samples.columns]
