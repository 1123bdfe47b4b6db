"""``spa-recipe plan``: memory and time per stage before renting GPUs (:mod:`spa_recipes.planning.plan`).

``shapes.py`` reads a model's sizes from its config.json, ``memory.py`` counts what a device holds (every
constant with its source), ``plan.py`` walks the stage graph and decides what fits and what would;
``render.py`` prints it.
"""

from __future__ import annotations

import re

from spa_recipes.errors import UserError
from spa_recipes.planning.plan import Hardware, RunPlan, StagePlan, make_plan
from spa_recipes.planning.render import render

__all__ = ["Hardware", "RunPlan", "StagePlan", "make_plan", "parse_size", "render", "this_machine_memory"]

UNITS = {
    "": 1e9,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str, option: str) -> float:
    """Bytes of ``80GB``, ``141 GB``, ``16GiB``, ``80`` (GB).

    Raises:
        UserError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS or float(match.group(1)) <= 0:
        raise UserError(f"{option} {text!r}: not a size; write it as 80GB, 141GB or 16GiB")
    return float(match.group(1)) * UNITS[unit]


def this_machine_memory() -> float:
    """This machine's memory (``MemTotal``), in bytes; 16 GB where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16e9
