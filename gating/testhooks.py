"""Pause points for integration tests: a test that wants to kill the master at a precise
moment puts a file ``pause-<where>`` in the directory named by ``GATING_TEST_HOOKS_DIR``;
the code reaching that point writes ``paused-<where>`` and stops there (for good), and the
test kills the master. Unset in production: then nothing is looked up (pure, no Twisted)."""

from __future__ import annotations

import os
from pathlib import Path

TEST_HOOKS_ENV = "GATING_TEST_HOOKS_DIR"


def pause_requested(name: str, who: str) -> bool:
    """Whether a test asked to stop at ``name`` (a file ``pause-...``): if so, ``paused-...``
    is written (with ``who``, to say who stopped) and the caller stops there."""
    folder = os.environ.get(TEST_HOOKS_ENV)
    if not folder or not (Path(folder) / name).exists():
        return False
    (Path(folder) / name.replace("pause-", "paused-", 1)).write_text(who)
    return True
