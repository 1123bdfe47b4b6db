"""Head-to-head evaluation metrics: win rate and AlpacaEval 2.0-style length-controlled win rate.

An outcome is the model's result against the baseline on one prompt: 1 win, 0.5 tie, 0 loss.

Length-controlled win rate (after Dubois et al. 2024, "Length-Controlled AlpacaEval"), exactly:

    d_i  = len_model_i - len_baseline_i
    x_i  = tanh(d_i / std(d))                  (std with ddof=1; x_i = 0 when std is 0 or n < 2)
    p_i  = sigmoid(a + b * x_i)
    (a, b) = argmin  sum_i BCE(p_i, y_i) + (l2 / 2) * (a^2 + b^2)      (y_i = outcome, soft labels)
    LC   = 100 * mean_i sigmoid(a + b * 0) = 100 * sigmoid(a)

i.e. the predicted win rate had the two responses been equally long. AlpacaEval's GLM also has a
per-instruction difficulty term and is fitted jointly over many models; with one model against one
baseline that term is dropped. The small L2 penalty keeps (a, b) finite when the outcomes are all wins,
all losses, or perfectly separated by length (it pulls those rates slightly toward 50).

Intervals are over prompts: with K samples per prompt a prompt's outcome is the mean of its K, and the 95%
interval is a percentile bootstrap that resamples prompts (:func:`bootstrap_interval`); two models evaluated on
the same prompts are compared prompt by prompt (:func:`paired_difference`), which removes the prompts' own
difficulty from the noise. The interval covers the evaluation's sampling (which prompts, which draws), not the
training's: runs with other seeds are what measure that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from spa_recipes.judges.base import Judge

Messages = list[dict[str, str]]
CompareFn = Callable[[Sequence[Messages], Sequence[str], Sequence[str]], list[float | None]]


BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_interval(values: Sequence[float], level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per prompt), resampling the values.

    Deterministic for a given ``seed``; a single value gives ``(value, value)``.

    Raises:
        ValueError: if ``values`` is empty.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("need a non-empty list of values")
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference(model: dict[str, float], other: dict[str, float]) -> dict[str, Any]:
    """``model`` against ``other`` on the prompts both judged: per-prompt outcomes (prompt id -> mean outcome,
    as ``evaluate_pairs`` writes them) subtracted prompt by prompt.

    Returns:
        ``difference`` (mean difference in win-rate points), ``ci`` (its 95% bootstrap interval over
        prompts, points) and ``n`` (prompts in common).

    Raises:
        ValueError: if the two share no prompt.
    """
    common = sorted(model.keys() & other.keys())
    if not common:
        raise ValueError("the two evaluations share no judged prompt")
    d = [100.0 * (model[i] - other[i]) for i in common]
    return {"difference": float(np.mean(d)), "ci": list(bootstrap_interval(d)), "n": len(common)}


def win_rate(outcomes: Sequence[float]) -> float:
    """Mean outcome in percent (1 win, 0.5 tie, 0 loss).

    Raises:
        ValueError: if there are no outcomes or one is outside [0, 1].
    """
    y = _outcomes(outcomes)
    return float(100.0 * y.mean())


def length_controlled_win_rate(
    outcomes: Sequence[float], len_model: Sequence[float], len_baseline: Sequence[float], l2: float = 0.1
) -> float:
    """Win rate in percent predicted at equal lengths (formula in the module docstring).

    Args:
        outcomes: 1 win, 0.5 tie, 0 loss, one per prompt.
        len_model: length of the model's response per prompt (AlpacaEval uses characters).
        len_baseline: length of the baseline's response per prompt, same unit.
        l2: strength of the L2 penalty on ``(a, b)``.

    Raises:
        ValueError: if the three sequences differ in length, are empty, or an outcome is outside [0, 1].
    """
    y = _outcomes(outcomes)
    d = np.asarray(len_model, dtype=float) - np.asarray(len_baseline, dtype=float)
    if d.shape != y.shape:
        raise ValueError(f"{len(y)} outcomes but {len(len_model)} / {len(len_baseline)} lengths")
    scale = d.std(ddof=1) if len(d) > 1 else 0.0
    x = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    a, _ = _fit_logistic(x, y, l2)
    return float(100.0 / (1.0 + np.exp(-a)))


def evaluate_pairs(
    prompts: Sequence[Messages],
    model_responses: Sequence[str],
    baseline_responses: Sequence[str],
    compare_fn: CompareFn,
    *,
    model_num_tokens: Sequence[int] | None = None,
    baseline_num_tokens: Sequence[int] | None = None,
    model_finished: Sequence[bool] | None = None,
    baseline_finished: Sequence[bool] | None = None,
    prompt_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compare a model's responses with a baseline's, prompt by prompt.

    Args:
        prompts: the prompts (chat messages).
        model_responses: the model's response to each prompt.
        baseline_responses: the baseline's response to each prompt.
        compare_fn: ``(prompts, model_responses, baseline_responses) -> outcomes`` (1 model wins, 0.5
            tie, 0 baseline wins, ``None`` when the comparison could not be judged; those are left out).
        model_num_tokens: response lengths in tokens, when known (reported, not used for LC).
        baseline_num_tokens: the same for the baseline.
        model_finished: per response, whether it ended with EOS (False: cut at max_new_tokens), when known.
        baseline_finished: the same for the baseline.
        prompt_ids: per comparison, the id of its prompt (comparisons of one prompt's K samples share it);
            None: every comparison is its own prompt.

    Returns:
        ``win_rate``, ``win_rate_se`` (standard error over prompts, points), ``win_rate_ci`` (95% bootstrap
        interval over prompts, points), ``outcomes`` (prompt id -> mean outcome of its judged comparisons, for
        :func:`paired_difference`), ``prompts`` (prompts judged), ``lc_win_rate`` (lengths in characters, as
        AlpacaEval), ``n`` (judged comparisons), ``wins``, ``ties``, ``losses``, ``invalid``, and the mean
        response lengths ``mean_words_model``, ``mean_words_baseline`` (and ``mean_tokens_*`` when given), and
        the share of responses that ended with EOS, ``eos_rate_model`` and ``eos_rate_baseline`` (when the
        ``*_finished`` flags are given: a falling EOS rate is the mark of length hacking). Lengths and EOS
        rates are over all prompts, judged or not.

    Raises:
        ValueError: if the inputs differ in length or no comparison could be judged.
    """
    if not len(prompts) == len(model_responses) == len(baseline_responses):
        raise ValueError("prompts, model_responses and baseline_responses differ in length")
    results = list(compare_fn(prompts, model_responses, baseline_responses))
    if len(results) != len(prompts):
        raise ValueError(f"compare_fn returned {len(results)} outcomes for {len(prompts)} prompts")
    judged = [i for i, o in enumerate(results) if o is not None]
    if not judged:
        raise ValueError("no comparison could be judged")
    y = _outcomes([results[i] for i in judged])
    ids = [str(i) for i in range(len(prompts))] if prompt_ids is None else [str(i) for i in prompt_ids]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} prompt ids for {len(prompts)} comparisons")
    by_prompt: dict[str, list[float]] = {}
    for i, outcome in zip(judged, y, strict=True):
        by_prompt.setdefault(ids[i], []).append(float(outcome))
    per_prompt = {pid: float(np.mean(v)) for pid, v in by_prompt.items()}
    z = np.asarray(list(per_prompt.values()))
    metrics: dict[str, Any] = {
        "win_rate": float(100.0 * y.mean()),
        "win_rate_se": float(100.0 * z.std(ddof=1) / np.sqrt(len(z))) if len(z) > 1 else 0.0,
        "win_rate_ci": [100.0 * v for v in bootstrap_interval(z)],
        "prompts": len(z),
        "lc_win_rate": length_controlled_win_rate(
            y, [len(model_responses[i]) for i in judged], [len(baseline_responses[i]) for i in judged]
        ),
        "n": len(y),
        "wins": int((y == 1.0).sum()),
        "ties": int((y == 0.5).sum()),
        "losses": int((y == 0.0).sum()),
        "invalid": len(results) - len(y),
        "mean_words_model": float(np.mean([len(r.split()) for r in model_responses])),
        "mean_words_baseline": float(np.mean([len(r.split()) for r in baseline_responses])),
        "outcomes": per_prompt,
    }
    if model_num_tokens is not None:
        metrics["mean_tokens_model"] = float(np.mean(model_num_tokens))
    if baseline_num_tokens is not None:
        metrics["mean_tokens_baseline"] = float(np.mean(baseline_num_tokens))
    if model_finished is not None:
        metrics["eos_rate_model"] = float(np.mean(model_finished))
    if baseline_finished is not None:
        metrics["eos_rate_baseline"] = float(np.mean(baseline_finished))
    return metrics


def judge_compare(judge: Judge) -> CompareFn:
    """A ``compare_fn`` from a judge: each prompt's two responses are scored as one row of K = 2.

    The model wins when its score is higher, ties on equal scores; an invalid judgement gives ``None``.
    """

    def compare(prompts: Sequence[Messages], model: Sequence[str], baseline: Sequence[str]) -> list[float | None]:
        rows = [
            {"id": str(i), "prompt": p, "responses": [m, b]}
            for i, (p, m, b) in enumerate(zip(prompts, model, baseline, strict=True))
        ]
        outcomes: list[float | None] = []
        for row in judge.score(rows, None):
            (sm, sb), (vm, vb) = row["scores"], row["valid"]
            outcomes.append(None if not (vm and vb) else 1.0 if sm > sb else 0.5 if sm == sb else 0.0)
        return outcomes

    return compare


def _outcomes(outcomes: Sequence[float] | np.ndarray) -> np.ndarray:
    y = np.asarray(outcomes, dtype=float)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError("need a non-empty list of outcomes")
    if not np.all((y >= 0.0) & (y <= 1.0)):
        raise ValueError("outcomes must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    return y


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 100) -> tuple[float, float]:
    """L2-penalised logistic regression of soft labels ``y`` on ``[1, x]`` by Newton's method (convex)."""
    features = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(features @ w)))
        grad = features.T @ (p - y) + l2 * w
        hess = features.T @ (features * (p * (1.0 - p))[:, None]) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])
