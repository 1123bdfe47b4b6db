"""`spa-recipe export-alpacaeval`: AlpacaEval model-output files from a real (tiny) run, and our LC win rate
against AlpacaEval's own GLM code when the optional `alpaca-eval` package is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers_tiny import make_tiny_model

from spa_recipes.evaluation import length_controlled_win_rate

ROOT = Path(__file__).resolve().parent.parent


def spa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run on rule prompts: seed DPO, no iteration, evaluated with the rule gold."""
    tmp = tmp_path_factory.mktemp("alpacaeval")
    model = make_tiny_model(tmp / "sft", hidden=16, layers=1, heads=2)
    recipe = tmp / "r.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        run: {{name: ae, output_dir: {tmp / "runs"}}}
        models: {{sft: {model}, dtype: float32}}
        data: {{name: rule_prompts, num_prompts: 40}}
        split: {{seed_size: 8, prompts_per_iteration: 8, eval_holdout: 6}}
        generation: {{name: hf, max_new_tokens: 5, batch_size: 8}}
        training:
          seed: {{epochs: 1, learning_rate: 1.0e-3, batch_size: 4, max_length: 48, max_prompt_length: 32}}
          iteration: {{max_length: 48, max_prompt_length: 32}}
        iterations: 0
        evaluation: {{evaluator: {{name: rule_gold}}, samples_per_prompt: 2}}
    """)
    )
    result = spa("run", str(recipe), "--no-progress")
    assert result.returncode == 0, result.stderr
    return tmp / "runs" / "ae"


def test_export_holdout_responses(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "outputs.json"
    result = spa("export-alpacaeval", str(run_dir), "--stage", "eval_seed_dpo", "--out", str(out), "--sample", "1")
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    responses = [json.loads(line) for line in (run_dir / "eval_seed_dpo" / "responses.jsonl").read_text().splitlines()]
    assert len(records) == len(responses) == 6
    for record, row in zip(records, responses, strict=True):
        assert set(record) == {"instruction", "output", "generator", "dataset"}
        assert record["instruction"] == row["prompt"][-1]["content"]
        assert record["output"] == row["responses"][1]
        assert record["generator"] == "ae/eval_seed_dpo"
        assert record["dataset"] == "spa_holdout"


def test_export_answers_an_instruction_file(run_dir: Path, tmp_path: Path) -> None:
    instructions = tmp_path / "alpaca_eval.json"
    instructions.write_text(
        json.dumps(
            [
                {"instruction": "w1 w2 w3", "dataset": "helpful_base", "output": "the reference", "generator": "gpt4"},
                {"instruction": "w4", "dataset": "oasst"},
                {"instruction": "w5 w6"},
            ]
        )
    )
    out = tmp_path / "model_outputs.json"
    # A training stage names its model directly (an eval stage names the model it evaluated).
    result = spa(
        "export-alpacaeval",
        str(run_dir),
        "--stage",
        "seed_dpo",
        "--out",
        str(out),
        "--instructions",
        str(instructions),
        "--generator",
        "tiny-spa",
        "--temperature",
        "0",
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert [r["instruction"] for r in records] == ["w1 w2 w3", "w4", "w5 w6"]
    assert [r["dataset"] for r in records] == ["helpful_base", "oasst", "custom"]
    assert all(r["generator"] == "tiny-spa" and isinstance(r["output"], str) for r in records)
    assert records[0]["output"] != "the reference"  # the model's answer, not the file's


def test_export_errors_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    result = spa("export-alpacaeval", str(run_dir), "--stage", "iter3_eval", "--out", str(tmp_path / "x.json"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --stage iter3_eval: not an evaluation stage of this run; choose one of: eval_baseline, "
        "eval_seed_dpo, or give --instructions"
    ]
    result = spa("export-alpacaeval", str(tmp_path), "--stage", "eval_baseline", "--out", str(tmp_path / "x.json"))
    assert result.returncode == 2 and "not a run directory" in result.stderr
    result = spa(
        "export-alpacaeval",
        str(run_dir),
        "--stage",
        "seed_dpo",
        "--out",
        str(tmp_path / "x.json"),
        "--instructions",
        str(tmp_path / "missing.json"),
    )
    assert result.returncode == 2 and "file not found" in result.stderr and "missing.json" in result.stderr
    result = spa(
        "export-alpacaeval",
        str(run_dir),
        "--stage",
        "iter1_train",
        "--out",
        str(tmp_path / "x.json"),
        "--instructions",
        str(tmp_path / "missing.json"),
    )
    assert result.returncode == 2
    assert "--stage iter1_train: no model; choose one of: seed_dpo, eval_baseline, eval_seed_dpo" in result.stderr


def test_lc_win_rate_matches_alpacaeval_glm() -> None:
    """Our LC win rate against AlpacaEval's own design matrix and logistic fit (its length_controlled_minimal GLM).

    AlpacaEval's full `length_controlled_v1` adds a per-instruction difficulty term and regularisation toward
    "gamed" baselines, both downloaded from the hub; those are not comparable offline and not in ours.
    """
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate", reason="optional: pip install alpaca-eval")
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 805
    len_baseline = rng.integers(200, 2000, n).astype(float)
    len_model = len_baseline * rng.lognormal(0.3, 0.5, n)
    delta = len_model - len_baseline
    p = 1 / (1 + np.exp(-(-0.5 + 1.5 * np.tanh(delta / delta.std(ddof=1)))))
    y = np.where(rng.random(n) < p, 1.0, 0.0)
    y[rng.random(n) < 0.05] = 0.5
    df = pd.DataFrame(
        {
            "preference": y,
            "std_delta_len": (len_baseline - len_model) / (len_baseline - len_model).std(),
            "not_gamed_baseline": True,
        }
    )
    test = df[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0.0
    train, x_test = glm.make_dmatrix_for_model(
        df, test, formula="np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1"
    )
    model = glm.fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, n_splits=0)  # L1, C=100
    theirs = float(model.predict_proba(x_test)[:, 1].mean() * 100)
    assert length_controlled_win_rate(y, len_model, len_baseline, l2=1e-9) == pytest.approx(theirs, abs=0.05)
    assert abs(length_controlled_win_rate(y, len_model, len_baseline) - theirs) < 0.5
