"""Compare our length-controlled win rate with AlpacaEval's GLM on the same synthetic annotations.

AlpacaEval is an optional, separate install (it pulls openai, scikit-learn, scipy, patsy, tiktoken); run this in
a scratch environment that has it and numpy, with the repository on the path:

    python -m venv /tmp/ae && /tmp/ae/bin/pip install alpaca-eval
    PYTHONPATH=. /tmp/ae/bin/python scripts/compare_lc_alpacaeval.py

AlpacaEval's `get_length_controlled_winrate` downloads per-instruction difficulties and "gamed" baseline
annotations from the hub (tatsu-lab/alpaca_eval) for its `length_controlled_v1` GLM; offline, this script
fits its `length_controlled_minimal` formula (`tanh(std_delta_len) + not_gamed_baseline - 1`: a length term and
an intercept, no difficulty term, no regularisation to the baseline) with AlpacaEval's own design-matrix and
`fit_LogisticRegressionCV` code, which is the model spa_recipes.evaluation fits. Prints one line per case.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from alpaca_eval.metrics.glm_winrate import fit_LogisticRegressionCV, make_dmatrix_for_model

from spa_recipes.evaluation import length_controlled_win_rate

FORMULA = "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1"


def alpacaeval_lc(outcomes: np.ndarray, len_model: np.ndarray, len_baseline: np.ndarray, n_splits: int) -> float:
    """AlpacaEval's GLM on our outcomes (1 model wins, 0.5 tie, 0 baseline wins); output_1 is the baseline."""
    delta = len_baseline - len_model  # AlpacaEval: len(output_1) - len(output_2)
    df = pd.DataFrame(
        {
            "preference": outcomes,  # AlpacaEval's preference after its "- 1": P(output_2, the model, wins)
            "std_delta_len": delta / pd.Series(delta).std(),
            "not_gamed_baseline": True,
            "index": np.arange(len(outcomes)),
        }
    )
    test = df[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0.0
    train, x_test = make_dmatrix_for_model(df, test, formula=FORMULA)
    model = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, n_splits=n_splits)
    return float(model.predict_proba(x_test)[:, 1].mean() * 100)


def synthetic(n: int, length_effect: float, skill: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Annotations where longer answers win more often (``length_effect``) on top of a ``skill`` advantage."""
    rng = np.random.default_rng(seed)
    len_baseline = rng.integers(200, 2000, n).astype(float)
    len_model = len_baseline * rng.lognormal(0.3, 0.5, n)
    delta = len_model - len_baseline
    p = 1 / (1 + np.exp(-(skill + length_effect * np.tanh(delta / delta.std(ddof=1)))))
    draw = rng.random(n)
    outcomes = np.where(draw < p, 1.0, 0.0)
    outcomes[rng.random(n) < 0.05] = 0.5  # some ties
    return outcomes, len_model, len_baseline


def main() -> None:
    cases = [(805, 1.5, 0.0, 0), (805, 1.0, -0.8, 1), (805, 0.0, 0.4, 2), (200, 2.0, -1.5, 3)]
    for n, length_effect, skill, seed in cases:
        y, lm, lb = synthetic(n, length_effect, skill, seed)
        ours = length_controlled_win_rate(y, lm, lb)
        ours_unpenalised = length_controlled_win_rate(y, lm, lb, l2=1e-9)
        theirs_cv = alpacaeval_lc(y, lm, lb, n_splits=5)
        theirs_c100 = alpacaeval_lc(y, lm, lb, n_splits=0)
        print(
            f"n={n} length_effect={length_effect} skill={skill}: win rate {100 * y.mean():.2f} | ours (l2=0.1) "
            f"{ours:.3f}, ours (l2~0) {ours_unpenalised:.3f} | alpaca_eval L1 C=100 {theirs_c100:.3f}, "
            f"alpaca_eval L1 5-fold CV {theirs_cv:.3f}"
        )


if __name__ == "__main__":
    main()
