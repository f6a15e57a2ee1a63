"""Find the classifier head: the ``nn.Linear`` whose output is the model's logits.

The implementation lives in ``mimic_explorer.scoring.head_trace`` (scoring is the lowest layer and
needs it for head scores); this module keeps the models-side name.
"""

from __future__ import annotations

from mimic_explorer.scoring.head_trace import find_head, trace_head

__all__ = ["find_head", "trace_head"]
