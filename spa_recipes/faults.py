"""Fault injection for the resume tests: kill this process with SIGKILL right after an artifact is written.

Set ``SPA_RECIPES_KILL_AT`` to the end of an artifact's path (any file written by :mod:`spa_recipes.atomic`, for
example ``iter1_generate/shards/shard-00001.jsonl`` or ``split/seed.jsonl``, or a training checkpoint,
``iter1_train/work/checkpoints/step-4``); when the process has just written that artifact it sends itself
SIGKILL, exactly as an out-of-memory killer or a pre-empted node would. Unset, each call is one environment lookup.

Set ``SPA_RECIPES_PAUSE_AT`` the same way to make the process sleep :data:`PAUSE_S` seconds after writing that
artifact (signals are handled meanwhile): a fixed moment for the tests of SIGTERM and Ctrl-C to signal it.

Set ``SPA_RECIPES_ENOSPC_AT`` the same way to make the writers of :mod:`spa_recipes.atomic` fail on that artifact
with ``OSError(ENOSPC)``, as a full disk would, while the temporary file or folder is being written.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

KILL_ENV = "SPA_RECIPES_KILL_AT"
ENOSPC_ENV = "SPA_RECIPES_ENOSPC_AT"
PAUSE_ENV = "SPA_RECIPES_PAUSE_AT"
PAUSE_S = 3.0


def fault_point(artifact: str | os.PathLike[str]) -> None:
    """Die here if ``SPA_RECIPES_KILL_AT`` is the end of this artifact's path; pause if ``SPA_RECIPES_PAUSE_AT`` is."""
    target = os.environ.get(KILL_ENV)
    if target and Path(artifact).as_posix().endswith(target):
        os.kill(os.getpid(), signal.SIGKILL)
    target = os.environ.get(PAUSE_ENV)
    if target and Path(artifact).as_posix().endswith(target):
        time.sleep(PAUSE_S)


def disk_full_point(artifact: str | os.PathLike[str]) -> None:
    """Raise ``OSError(ENOSPC)`` here if ``SPA_RECIPES_ENOSPC_AT`` is the end of this artifact's path."""
    target = os.environ.get(ENOSPC_ENV)
    if target and Path(artifact).as_posix().endswith(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(artifact))
