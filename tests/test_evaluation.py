"""Win rate and length-controlled win rate: outcomes on constructed comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from spa_recipes.evaluation import (
    bootstrap_interval,
    evaluate_pairs,
    judge_compare,
    length_controlled_win_rate,
    paired_difference,
    win_rate,
)
from spa_recipes.stages.evaluate import agreement


def test_win_rate_counts_ties_as_half() -> None:
    assert win_rate([1, 0.5, 0, 1]) == pytest.approx(62.5)
    with pytest.raises(ValueError):
        win_rate([1, 2])
    with pytest.raises(ValueError):
        win_rate([])


def length_game(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model that is longer on 70% of prompts and wins exactly there: length is all it has."""
    rng = np.random.default_rng(seed)
    longer = rng.random(n) < 0.7
    base = rng.integers(50, 200, n).astype(float)
    model = np.where(longer, base + rng.integers(20, 100, n), base - rng.integers(20, 100, n))
    return longer.astype(float), model, base


def test_winning_only_by_length_is_discounted() -> None:
    outcomes, model, base = length_game()
    wr, lc = win_rate(outcomes), length_controlled_win_rate(outcomes, model, base)
    assert 60 < wr < 80
    assert lc < wr - 10
    assert 35 < lc < 65  # at equal length, the judge sees no difference


def test_winning_while_shorter_is_credited() -> None:
    rng = np.random.default_rng(1)
    n = 400
    base = rng.integers(50, 200, n).astype(float)
    model = base - rng.integers(0, 60, n)  # always shorter
    # The judge prefers length, yet the model still wins 55%: it must be better at equal length.
    p_win = 0.75 - 0.5 * (base - model) / 60
    outcomes = (rng.random(n) < p_win).astype(float)
    assert length_controlled_win_rate(outcomes, model, base) > win_rate(outcomes) + 5


def test_no_length_effect_leaves_the_rate_alone() -> None:
    rng = np.random.default_rng(2)
    n = 1000
    outcomes = (rng.random(n) < 0.6).astype(float)
    model, base = rng.integers(50, 200, n), rng.integers(50, 200, n)
    assert length_controlled_win_rate(outcomes, model, base) == pytest.approx(win_rate(outcomes), abs=3)
    same = np.full(n, 100)
    assert length_controlled_win_rate(outcomes, same, same) == pytest.approx(win_rate(outcomes), abs=0.5)


def test_swapping_model_and_baseline_mirrors_the_rate() -> None:
    outcomes, model, base = length_game(seed=3)
    outcomes[::7] = 0.5
    lc = length_controlled_win_rate(outcomes, model, base)
    assert length_controlled_win_rate(1 - outcomes, base, model) == pytest.approx(100 - lc, abs=1e-6)


def test_all_wins_and_all_losses_stay_finite() -> None:
    lengths = np.arange(30.0)
    high = length_controlled_win_rate([1.0] * 30, lengths + 5, lengths)
    low = length_controlled_win_rate([0.0] * 30, lengths + 5, lengths)
    assert 90 < high < 100 and 0 < low < 10
    assert length_controlled_win_rate([1.0], [10], [3]) > 50  # a single comparison


def longer_wins(prompts, model, baseline) -> list[float | None]:
    """A length-biased judge that cannot judge empty responses."""
    return [
        None if not m or not b else 1.0 if len(m) > len(b) else 0.5 if len(m) == len(b) else 0.0
        for m, b in zip(model, baseline, strict=True)
    ]


def test_evaluate_pairs_reports_rates_lengths_and_invalid() -> None:
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    model = ["a b c d", "a b c d e f", "a b", "a b c", "", "a b c d e"]
    baseline = ["a b", "a b", "a b c d", "a b c", "a", "a b"]
    metrics = evaluate_pairs(
        prompts,
        model,
        baseline,
        longer_wins,
        model_num_tokens=[4, 6, 2, 3, 0, 5],
        baseline_num_tokens=[2] * 6,
        model_finished=[True, False, True, True, False, True],
        baseline_finished=[True] * 6,
    )
    assert metrics["n"] == 5 and metrics["invalid"] == 1
    assert (metrics["wins"], metrics["ties"], metrics["losses"]) == (3, 1, 1)
    assert metrics["win_rate"] == pytest.approx(70.0)
    assert metrics["lc_win_rate"] < metrics["win_rate"]
    assert metrics["mean_words_model"] == pytest.approx(20 / 6)
    assert metrics["mean_words_baseline"] == pytest.approx(14 / 6)
    assert metrics["mean_tokens_model"] == pytest.approx(20 / 6)
    assert metrics["mean_tokens_baseline"] == 2.0
    assert metrics["eos_rate_model"] == pytest.approx(4 / 6) and metrics["eos_rate_baseline"] == 1.0
    assert metrics["win_rate_se"] > 0
    with pytest.raises(ValueError, match="no comparison"):
        evaluate_pairs(prompts[:1], [""], ["a"], longer_wins)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_prompts() -> None:
    rng = np.random.default_rng(3)
    small, large = rng.binomial(1, 0.6, 50).astype(float), rng.binomial(1, 0.6, 800).astype(float)
    lo, hi = bootstrap_interval(small)
    assert lo < small.mean() < hi and bootstrap_interval(small) == (lo, hi)  # deterministic
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_l < large.mean() < hi_l
    # The width of a 95% interval of a proportion is about 2 x 1.96 x sqrt(p (1 - p) / n).
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * np.sqrt(large.mean() * (1 - large.mean()) / 800), rel=0.1)
    assert hi_l - lo_l < (hi - lo) / 2
    assert bootstrap_interval([0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_interval([])


def test_paired_difference_removes_what_the_prompts_share() -> None:
    # Prompt difficulty varies a lot; the model beats the other by 0.1 on every prompt.
    rng = np.random.default_rng(0)
    other = {str(i): float(v) for i, v in enumerate(rng.uniform(0.0, 0.9, 300))}
    model = {k: v + 0.1 for k, v in other.items()} | {"only_model": 1.0}
    paired = paired_difference(model, other)
    assert paired["n"] == 300 and paired["difference"] == pytest.approx(10.0)
    assert paired["ci"][0] == pytest.approx(10.0) and paired["ci"][1] == pytest.approx(10.0)
    # Unpaired, the same gap would drown in the prompts' spread: each win rate's own interval is ~6 points wide.
    lo, hi = bootstrap_interval(list(other.values()))
    assert 100 * (hi - lo) > 5
    noisy = paired_difference({k: 1.0 - v for k, v in other.items()}, other)
    assert noisy["ci"][0] < noisy["difference"] < noisy["ci"][1]
    with pytest.raises(ValueError, match="share no"):
        paired_difference({"a": 1.0}, {"b": 0.0})


def test_evaluate_pairs_averages_a_prompts_samples() -> None:
    prompts = [[{"role": "user", "content": f"q{i // 2}"}] for i in range(6)]  # 3 prompts x 2 samples
    model = ["a b c", "a", "a b c", "a b c", "", "a b c"]
    baseline = ["a b"] * 6
    metrics = evaluate_pairs(prompts, model, baseline, longer_wins, prompt_ids=["p0", "p0", "p1", "p1", "p2", "p2"])
    assert metrics["outcomes"] == {"p0": 0.5, "p1": 1.0, "p2": 1.0}  # p2's first sample could not be judged
    assert metrics["prompts"] == 3 and metrics["n"] == 5
    assert metrics["win_rate"] == pytest.approx(80.0)
    assert metrics["win_rate_se"] == pytest.approx(100 * np.std([0.5, 1, 1], ddof=1) / np.sqrt(3))
    lo, hi = metrics["win_rate_ci"]
    assert 50.0 <= lo <= hi <= 100.0
    with pytest.raises(ValueError, match="prompt ids"):
        evaluate_pairs(prompts, model, baseline, longer_wins, prompt_ids=["p0"])


def test_agreement_separates_gold_ties_from_decisive_pairs() -> None:
    # 10 pairs: gold ties 6 of them; of the 4 it decides, the judge's chosen is gold's on 1.
    verdicts = [0.5] * 6 + [1.0, 0.0, 0.0, 0.0]
    assert agreement(verdicts) == {
        "agreement_with_gold": pytest.approx(40.0),
        "gold_ties": pytest.approx(60.0),
        "agreement_decisive": pytest.approx(25.0),
        "pairs_judged": 10,
    }
    assert agreement([0.5, 0.5])["agreement_decisive"] is None
    assert agreement([])["agreement_with_gold"] is None


class WordCountJudge:
    """A judge (score contract) preferring more words; a response containing 'bad' cannot be judged."""

    def score(self, rows, out_dir=None):
        return [
            {
                **r,
                "scores": [float(len(x.split())) for x in r["responses"]],
                "valid": ["bad" not in x for x in r["responses"]],
            }
            for r in rows
        ]


def test_judge_compare_turns_scores_into_outcomes() -> None:
    compare = judge_compare(WordCountJudge())
    prompts = [[{"role": "user", "content": "q"}]] * 4
    assert compare(prompts, ["a b", "a", "a b", "bad"], ["a", "a b", "c d", "a"]) == [1.0, 0.0, 0.5, None]
