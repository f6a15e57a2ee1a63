"""Whether a process still runs: how a writer tells the temporary file of a process that was killed
(kill -9, a power cut) from one that another process is still writing.

Standard library only (see the layers in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True while process ``pid`` exists (also one of another user's, which cannot be signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
