"""The ``length_guard`` selector: min_max pairs, minus those whose chosen response is much longer."""

from __future__ import annotations

from spa_length_guard.config import LengthGuardConfig
from spa_recipes.api import JudgedRow, PairRow, PairSelectorContext, min_max_pairs


def word_count(text: str) -> int:
    """Words of a response, split on whitespace (tokenizer-free, so the guard reads the same for any model)."""
    return len(text.split())


def too_long(longer: str, shorter: str, ratio: float) -> bool:
    """Whether ``longer`` has more than ``ratio`` times the words of ``shorter`` (any words vs none counts)."""
    return word_count(longer) > ratio * word_count(shorter)


class LengthGuardSelector:
    """Chosen = highest score, rejected = lowest (as ``min_max``); pairs that reward length are dropped.

    Args:
        cfg: the validated :class:`LengthGuardConfig`.
        ctx: the pair selector context (empty: a selector needs nothing but its config).
    """

    def __init__(self, cfg: LengthGuardConfig, ctx: PairSelectorContext = PairSelectorContext()) -> None:
        self.cfg = cfg

    def select(self, rows: list[JudgedRow], seed: int) -> tuple[list[PairRow], dict[str, int]]:
        """Pairs from judged rows, without the ones whose chosen is more than ``max_length_ratio`` x longer.

        Args:
            rows: judged rows ``{"id", "prompt", "responses", "scores", "valid"[, "policy_logps"]}``.
            seed: unused (min_max draws nothing at random).

        Returns:
            ``(pairs, counts)``: min_max's pair rows and counts, with ``counts["pairs"]`` the pairs kept
            and ``counts["dropped_length"]`` the pairs dropped by the guard.
        """
        # Composition, not inheritance: min_max (spa_recipes.api) does the picking, ties and identical texts.
        pairs, counts = min_max_pairs(rows, ties=self.cfg.ties, drop_identical=self.cfg.drop_identical)
        ratio = self.cfg.max_length_ratio
        kept = []
        for pair in pairs:
            chosen, rejected = pair["chosen"], pair["rejected"]
            if too_long(chosen, rejected, ratio) or (self.cfg.symmetric and too_long(rejected, chosen, ratio)):
                continue
            kept.append(pair)
        counts = {**counts, "pairs": len(kept), "dropped_length": len(pairs) - len(kept)}
        return kept, counts
