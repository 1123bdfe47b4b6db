"""Data mixers: an iteration's training pairs from its own self-labelled pairs and a pool to replay.

DICE (arXiv 2406.09760) trains each iteration on ``n_gen = min(N (1 - gamma), |generated|)`` generated pairs plus
``gamma n_gen / (1 - gamma)`` human-labelled pairs (N: the labelled set's size, gamma = 0.5), so that a fraction
gamma of the data is human. Every draw is from a generator seeded by ``(seed, iteration, what)``: a rerun or a
resumed run mixes the same pairs. Replayed pairs carry ``"source"``; their order is the pool's, after the
iteration's own pairs (the trainer shuffles).
"""

from __future__ import annotations

import random
from typing import Any

from spa_recipes.api import DataMixerContext
from spa_recipes.mixers_config import NoMixerConfig, ReplayConfig

Row = dict[str, Any]


class NoMixer:
    """Each iteration trains on its own pairs only."""

    def __init__(self, cfg: NoMixerConfig, ctx: DataMixerContext = DataMixerContext()) -> None:
        pass

    def mix(self, pairs: list[Row], pool: list[Row], *, seed: int, iteration: int) -> tuple[list[Row], dict[str, int]]:
        return pairs, {"generated": len(pairs), "replayed": 0}


def _draw(rows: list[Row], n: int, seed: int, iteration: int, what: str) -> list[Row]:
    """``n`` of ``rows`` without replacement, in their original order (a seeded choice of positions)."""
    if n >= len(rows):
        return list(rows)
    keep = sorted(random.Random(f"{seed}:{iteration}:{what}").sample(range(len(rows)), n))
    return [rows[i] for i in keep]


class Replay:
    """Experience replay (see the module docstring); ``cfg.fraction`` is gamma."""

    def __init__(self, cfg: ReplayConfig, ctx: DataMixerContext = DataMixerContext()) -> None:
        self.cfg = cfg

    def mix(self, pairs: list[Row], pool: list[Row], *, seed: int, iteration: int) -> tuple[list[Row], dict[str, int]]:
        gamma = self.cfg.fraction
        generated = pairs
        if self.cfg.cap_generated and pool:
            generated = _draw(pairs, int(len(pool) * (1.0 - gamma)), seed, iteration, "generated")
        wanted = round(gamma * len(generated) / (1.0 - gamma))
        own = {str(p["id"]) for p in generated}
        # Pair ids stay unique: the trainer keys reference log-probs by them.
        candidates = [p for p in pool if str(p["id"]) not in own]
        label = "seed" if self.cfg.source == "seed" else f"iteration {iteration - 1}"
        replayed = [{**row, "source": label} for row in _draw(candidates, wanted, seed, iteration, "replayed")]
        counts = {
            "generated": len(generated),
            "generated_left_out": len(pairs) - len(generated),
            "replayed": len(replayed),
            "replay_short": wanted - len(replayed),  # the pool had fewer pairs than the fraction asks for
        }
        return generated + replayed, counts
