"""How this project's processes keep Arrow's memory from piling up: the compute commands (``train``,
``score``) use the system allocator, and the app hands freed memory back after its large reads.

Why: Arrow's default pool (mimalloc in the pinned pyarrow) keeps freed blocks for reuse. A run
writes one score part per chunk of the pool, so that retained memory shows up as a peak RSS that
creeps up with the pool size: ``benchmarks/bench_pool_scale.py`` measured the scoring loop at
+13 % from 1 M to 12.8 M samples with it, and flat (within noise) with the system allocator, at the
same speed. The app keeps Arrow's default: it hands freed memory back itself after its large reads.
"""

from __future__ import annotations

import pyarrow as pa


def use_system_allocator() -> None:
    """Make the process's Arrow allocations go through the C library's allocator from here on."""
    pa.set_memory_pool(pa.system_memory_pool())


def release_arrow_memory() -> None:
    """Hand Arrow's freed memory back to the system (its allocator keeps freed blocks for reuse, which
    after reading a 12.8 M-row table is a gigabyte the process no longer needs)."""
    pa.default_memory_pool().release_unused()
