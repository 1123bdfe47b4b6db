"""Warnings about length hacking: responses that grow until they no longer end.

Every implicit-reward judge drifts toward long responses (the toy world: from SFT to iteration 3 responses grow
from 16 to 29 words, the samples' EOS rate falls to 0.67 and the judge's agreement with gold from 79% to 57%).
The report says so in one line per finding, from the numbers :mod:`spa_recipes.reporting.collect` read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # collect reads its tables with truncation() below
    from spa_recipes.reporting.collect import RunData

# An iteration whose samples are cut at max_new_tokens more often than this is warned about. A trained model
# ends nearly all of its responses; once a fifth is cut off, over a third of the pairs drawn from two samples
# (1 - 0.8 ** 2 = 0.36) compare at least one unfinished text, so the judge's preference is largely about
# which partial text is longer, and DPO teaches the next model not to stop. The toy world's iteration 3
# (a third cut, agreement with gold down to 57%) is well over it.
TRUNCATED_SHARE_LIMIT = 0.2

# Mean words of the last evaluated model over the baseline's beyond which the growth is warned about. In the
# toy world (docs/tiny_world.md) seed DPO and iteration 1 stay within it (16 and 20 words: 1.0 and 1.2 times
# SFT's ~16), while iterations 2 and 3 (25 and 29 words), whose judge agrees with gold ever less, pass it.
WORDS_GROWTH_LIMIT = 1.5

LENGTH_HACKING = "Likely length hacking: the judge rewards length."
# When the baseline itself is cut as often, the iterations did not cause it: the budget is too small.
SHORT_BUDGET = (
    "The baseline is cut over the limit too, so the likely cause is not the iterations: max_new_tokens is too "
    "small for these responses (or the models have not learnt to stop)."
)
REMEDIES = (
    "a length-regularised score transform (score_transform: {name: length_regularized}), dropping truncated "
    "responses in the pair selector (pair_selector.drop_truncated: true), or more generation.max_new_tokens"
)


def _share(count: Any, total: Any) -> float | None:
    """count / total, or None when either is unknown (an older run's counts) or there is nothing to count."""
    if not isinstance(count, int | float) or not isinstance(total, int | float) or total <= 0:
        return None
    return float(count) / float(total)


def truncation(summary: dict[str, Any] | None, pairs: dict[str, Any] | None) -> dict[str, float | None]:
    """One iteration's truncation figures (None where the run did not record them).

    Args:
        summary: its generate stage's summary (``eos_rate``, ...).
        pairs: its pairs stage's counts (``pairs``, and from newer runs ``chosen_truncated``,
            ``rejected_truncated``: pairs whose chosen / rejected response did not end with EOS).

    Returns:
        ``eos_rate`` of its samples, ``truncated_share`` (1 - EOS rate: samples cut at max_new_tokens),
        ``chosen_truncated_share`` and ``rejected_truncated_share`` (of its pairs).
    """
    eos = (summary or {}).get("eos_rate")
    eos = float(eos) if isinstance(eos, int | float) else None
    pairs = pairs or {}
    return {
        "eos_rate": eos,
        "truncated_share": None if eos is None else 1.0 - eos,
        "chosen_truncated_share": _share(pairs.get("chosen_truncated"), pairs.get("pairs")),
        "rejected_truncated_share": _share(pairs.get("rejected_truncated"), pairs.get("pairs")),
    }


def length_warnings(data: RunData) -> list[str]:
    """One line per sign of length hacking in a run: iterations over :data:`TRUNCATED_SHARE_LIMIT`, and the
    last evaluated model's mean words over :data:`WORDS_GROWTH_LIMIT` times the baseline's."""
    results = data.results
    baseline = results["baseline"]
    base_eos = (data.baseline_stats or {}).get("eos_rate")
    base_note = (
        None if base_eos is None else f"{baseline} (baseline) on the hold-out prompts {100 * (1 - base_eos):.0f}%"
    )
    lines = []
    for it in results["iterations"]:
        share = it.get("truncated_share")
        if share is None or share <= TRUNCATED_SHARE_LIMIT:
            continue
        chosen = it.get("chosen_truncated_share")
        notes = [f"its chosen responses {100 * chosen:.0f}%" if chosen is not None else None, base_note]
        cut = "; cut: " + ", ".join(n for n in notes if n) if any(notes) else ""
        cause = SHORT_BUDGET if base_eos is not None and 1 - base_eos > TRUNCATED_SHARE_LIMIT else LENGTH_HACKING
        lines.append(
            f"iteration {it['iteration']}: {100 * share:.0f}% of its samples were cut at max_new_tokens "
            f"(EOS rate {1 - share:.2f}{cut}), over the {100 * TRUNCATED_SHARE_LIMIT:.0f}% "
            f"limit. {cause} Remedies: {REMEDIES}."
        )
    models = results["models"]
    if models:
        last = models[-1]
        before = (data.baseline_stats or {}).get("mean_words") or last["baseline_mean_words"]
        if before and last["mean_words"] > WORDS_GROWTH_LIMIT * before:
            lines.append(
                f"{last['model']} (iteration {last['iteration']}) answers in {last['mean_words']:.1f} words on "
                f"average, {last['mean_words'] / before:.1f} times the {before:.1f} of {baseline} (baseline), over "
                f"the {WORDS_GROWTH_LIMIT:g} times limit. {LENGTH_HACKING} Remedies: {REMEDIES}."
            )
    return lines
