"""The implicit-reward judge against a direct computation with the two models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spa_recipes.builtins import ImplicitJudgeConfig
from spa_recipes.judges import Judge
from spa_recipes.judges.implicit import ImplicitRewardJudge

ROWS = [
    {"id": "r0", "prompt": [{"role": "user", "content": "w1 w2"}], "responses": ["w3 w4 w5", "w6"]},
    {"id": "r1", "prompt": [{"role": "user", "content": "w7"}], "responses": ["", "w8 w9 w10 w11 w12 w13"]},
    {"id": "r2", "prompt": [{"role": "user", "content": "w14 w15 w16"}], "responses": ["w17 w18", "w17 w18"]},
]


def direct_logps(path: str, rows: list[dict]) -> list[list[float]]:
    """Sum of log-probs of each response + EOS after its chat-templated prompt, one sequence at a time."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        logps = []
        for response in row["responses"]:
            answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            logps.append(sum(logprobs[len(prompt) + j - 1, tok].item() for j, tok in enumerate(answer)))
        out.append(logps)
    return out


def make_judge(models: dict[str, str], previous: str | None = "c", **cfg) -> ImplicitRewardJudge:
    return ImplicitRewardJudge(
        ImplicitJudgeConfig(**cfg),
        policy_path=models["a"],
        sft_path=models["b"],
        previous_path=models[previous] if previous else None,
        dtype="float32",
        device="cpu",
    )


def assert_scores(rows: list[dict], expected: list[list[float]]) -> None:
    for row, exp in zip(rows, expected, strict=True):
        assert row["scores"] == pytest.approx(exp, abs=1e-4)


def test_implicit_judge_against_sft_reference(tiny_models: dict[str, str]) -> None:
    judge = make_judge(tiny_models, beta=0.1, batch_size=2)
    assert isinstance(judge, Judge)
    policy, sft = direct_logps(tiny_models["a"], ROWS), direct_logps(tiny_models["b"], ROWS)
    rows = judge.score(ROWS)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    assert all(r["responses"] == src["responses"] for r, src in zip(rows, ROWS, strict=True))
    assert_scores(
        rows, [[0.1 * (p - s) for p, s in zip(ps, ss, strict=True)] for ps, ss in zip(policy, sft, strict=True)]
    )
    for row, ps in zip(rows, policy, strict=True):
        assert row["policy_logps"] == pytest.approx(ps, abs=1e-4)
        assert row["valid"] == [True, True]
    # Identical responses get identical rewards.
    assert rows[2]["scores"][0] == rows[2]["scores"][1]


def test_implicit_judge_previous_and_none_references(tiny_models: dict[str, str]) -> None:
    policy = direct_logps(tiny_models["a"], ROWS)
    previous = direct_logps(tiny_models["c"], ROWS)
    sft = direct_logps(tiny_models["b"], ROWS)
    rows = make_judge(tiny_models, reference="previous", beta=0.5).score(ROWS)
    assert_scores(
        rows, [[0.5 * (p - q) for p, q in zip(ps, qs, strict=True)] for ps, qs in zip(policy, previous, strict=True)]
    )
    # Iteration 1: the model before the policy is the SFT model.
    rows = make_judge(tiny_models, previous=None, reference="previous", beta=0.5).score(ROWS)
    assert_scores(
        rows, [[0.5 * (p - s) for p, s in zip(ps, ss, strict=True)] for ps, ss in zip(policy, sft, strict=True)]
    )
    rows = make_judge(tiny_models, reference="none", beta=0.2).score(ROWS)
    assert_scores(rows, [[0.2 * p for p in ps] for ps in policy])


def test_implicit_judge_length_normalize(tiny_models: dict[str, str]) -> None:
    policy, sft = direct_logps(tiny_models["a"], ROWS), direct_logps(tiny_models["b"], ROWS)
    lengths = [[len(r.split()) + 1 for r in row["responses"]] for row in ROWS]  # words + EOS
    rows = make_judge(tiny_models, length_normalize=True, beta=0.1).score(ROWS)
    expected = [
        [0.1 * (p - s) / n for p, s, n in zip(ps, ss, ns, strict=True)]
        for ps, ss, ns in zip(policy, sft, lengths, strict=True)
    ]
    assert_scores(rows, expected)
    for row, ps in zip(rows, policy, strict=True):  # the cached log-probs stay summed
        assert row["policy_logps"] == pytest.approx(ps, abs=1e-4)


def test_implicit_judge_does_not_depend_on_batching(tiny_models: dict[str, str]) -> None:
    one = make_judge(tiny_models, batch_size=1).score(ROWS)
    many = make_judge(tiny_models, batch_size=16).score(ROWS)
    for a, b in zip(one, many, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_implicit_judge_resumes_from_shards(tiny_models: dict[str, str], tmp_path: Path) -> None:
    rows = ROWS * 3
    rows = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(rows)]
    judge = make_judge(tiny_models)
    judge.shard_size = 4
    first = judge.score(rows, tmp_path)
    assert sorted(p.name for p in (tmp_path / "reference").glob("shard-*")) == [
        f"shard-0000{i}.jsonl" for i in range(3)
    ]
    (tmp_path / "reference" / "shard-00001.jsonl").unlink()
    assert judge.score(rows, tmp_path) == first
    # Finished shards are reused without loading a model.
    gone = ImplicitRewardJudge(
        ImplicitJudgeConfig(), policy_path="missing-a", sft_path="missing-b", previous_path=None, shard_size=4
    )
    assert gone.score(rows, tmp_path) == first
    # Shards of other rows are refused, not silently mixed in.
    with pytest.raises(ValueError, match="other rows"):
        judge.score([{**r, "id": r["id"] + "x"} for r in rows], tmp_path)


def test_non_finite_scores_are_invalid(tiny_models: dict[str, str], tmp_path: Path) -> None:
    # A reference whose output layer is broken (NaN weights) gives NaN log-probs for every response.
    broken = AutoModelForCausalLM.from_pretrained(tiny_models["b"])
    with torch.no_grad():
        broken.lm_head.weight[broken.config.eos_token_id] = float("nan")
    broken.save_pretrained(tmp_path / "broken")
    AutoTokenizer.from_pretrained(tiny_models["b"]).save_pretrained(tmp_path / "broken")
    judge = ImplicitRewardJudge(
        ImplicitJudgeConfig(),
        policy_path=tiny_models["a"],
        sft_path=str(tmp_path / "broken"),
        previous_path=None,
        dtype="float32",
    )
    rows = judge.score(ROWS[:2])
    assert all(r["valid"] == [False, False] for r in rows)
    assert all(s != s for r in rows for s in r["scores"])  # NaN
    assert all(lp == lp for r in rows for lp in r["policy_logps"])  # the policy itself was fine
