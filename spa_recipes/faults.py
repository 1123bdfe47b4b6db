"""Fault injection for the resume tests: kill this process with SIGKILL at a named point.

Set ``SPA_RECIPES_KILL_AT=<point>`` (for example ``iter1_generate/shard-1`` or ``iter1_train/step-4``);
when the process reaches that point it sends itself SIGKILL, exactly as an out-of-memory killer or a
pre-empted node would. Unset, every call is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "SPA_RECIPES_KILL_AT"


def fault_point(name: str) -> None:
    """Die here if ``SPA_RECIPES_KILL_AT`` names this point."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
