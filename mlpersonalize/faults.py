"""Named crash points for durability tests: the process kills itself where a test asks it to."""

from __future__ import annotations

import os
import signal

FAULT_ENV = "MLPERSONALIZE_FAULT"


def fault_point(name: str) -> None:
    """SIGKILL this process if ``$MLPERSONALIZE_FAULT`` (comma-separated) names ``name``.

    SIGKILL, not an exception: a crash runs no cleanup handlers, which is what the tests need
    to prove that whatever is on disk at this point is safe.
    """
    wanted = os.environ.get(FAULT_ENV)
    if wanted and name in {part.strip() for part in wanted.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)
