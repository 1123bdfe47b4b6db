"""Sharded outputs and HF generation: layout, counts, EOS flags, resume equality, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spa_recipes.generation.config import HFGenerationConfig
from spa_recipes.generation.hf import HFGenerator
from spa_recipes.generation.shards import read_shards, run_sharded


def make_prompts(n: int) -> list[dict]:
    """``n`` prompt rows of 1-3 words (varied lengths exercise left padding)."""
    return [
        {"id": f"p{i}", "prompt": [{"role": "user", "content": " ".join(f"w{(i + j) % 50}" for j in range(1 + i % 3))}]}
        for i in range(n)
    ]


# Shards ---------------------------------------------------------------------------------------------


def test_run_sharded_writes_each_shard_and_skips_finished_ones(tmp_path: Path) -> None:
    calls = []

    def fn(index: int, items: list[int]) -> list[dict]:
        calls.append(index)
        return [{"x": x, "shard": index} for x in items]

    rows = run_sharded(list(range(7)), 3, tmp_path, fn, desc="t")
    assert [r["x"] for r in rows] == list(range(7))
    assert calls == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.glob("shard-*.jsonl")) == [
        "shard-00000.jsonl",
        "shard-00001.jsonl",
        "shard-00002.jsonl",
    ]
    assert read_shards(tmp_path) == rows

    (tmp_path / "shard-00001.jsonl").unlink()
    (tmp_path / ".tmp-shard-00002.jsonl-123").write_text("half a row")  # remains of a cut-off write
    calls.clear()
    assert run_sharded(list(range(7)), 3, tmp_path, fn) == rows
    assert calls == [1]
    assert read_shards(tmp_path) == rows


def test_run_sharded_refuses_shards_of_another_layout(tmp_path: Path) -> None:
    run_sharded(list(range(4)), 2, tmp_path, lambda i, xs: [{"x": x} for x in xs])
    with pytest.raises(ValueError, match="shard_size"):
        run_sharded(list(range(4)), 3, tmp_path, lambda i, xs: [{"x": x} for x in xs])
    with pytest.raises(ValueError, match="num_items"):
        run_sharded(list(range(5)), 2, tmp_path, lambda i, xs: [{"x": x} for x in xs])


def test_read_shards_rejects_a_gap(tmp_path: Path) -> None:
    run_sharded(list(range(6)), 2, tmp_path, lambda i, xs: [{"x": x} for x in xs])
    (tmp_path / "shard-00001.jsonl").unlink()
    with pytest.raises(ValueError, match="unfinished"):
        read_shards(tmp_path)


# HF generation --------------------------------------------------------------------------------------


def generator(**overrides) -> HFGenerator:
    base = {"samples_per_prompt": 3, "temperature": 1.0, "max_new_tokens": 6, "shard_size": 3, "batch_size": 2}
    return HFGenerator(HFGenerationConfig(**{**base, **overrides}))


def generate(path: str, out_dir: Path, seed: int = 0, n: int = 7, **overrides) -> list[dict]:
    return generator(**overrides).generate(
        make_prompts(n), model_path=path, out_dir=out_dir, seed=seed, dtype="float32"
    )


def test_generate_layout_and_counts(tiny_models: dict[str, str], tmp_path: Path) -> None:
    rows = generate(tiny_models["a"], tmp_path)
    prompts = make_prompts(7)
    assert [r["id"] for r in rows] == [p["id"] for p in prompts]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in prompts]
    assert [
        len(json.loads(line)["responses"])
        for f in sorted(tmp_path.glob("shard-*.jsonl"))
        for line in f.read_text().splitlines()
    ] == [3] * 7
    assert [len(f.read_text().splitlines()) for f in sorted(tmp_path.glob("shard-*.jsonl"))] == [3, 3, 1]
    assert read_shards(tmp_path) == rows
    for row in rows:
        assert len(row["responses"]) == len(row["finished"]) == len(row["num_tokens"]) == 3
        for text, finished, n in zip(row["responses"], row["finished"], row["num_tokens"], strict=True):
            assert "<eos>" not in text and "<pad>" not in text
            assert len(text.split()) <= n <= 6
            assert finished == (n < 6)  # unfinished means cut by max_new_tokens
    # Sampling at temperature 1 from a random model gives varied responses.
    assert len({t for r in rows for t in r["responses"]}) > 10


def test_generate_eos_flags(tiny_models: dict[str, str], tmp_path: Path) -> None:
    ended = generate(tiny_models["eos_always"], tmp_path / "always", n=4)
    assert all(r["finished"] == [True] * 3 and r["num_tokens"] == [0] * 3 and r["responses"] == [""] * 3 for r in ended)
    cut = generate(tiny_models["eos_never"], tmp_path / "never", n=4)
    assert all(r["finished"] == [False] * 3 and r["num_tokens"] == [6] * 3 for r in cut)
    assert all(0 < len(text.split()) <= 6 for r in cut for text in r["responses"])


def test_generate_resume_equals_uninterrupted_run(tiny_models: dict[str, str], tmp_path: Path) -> None:
    first = generate(tiny_models["a"], tmp_path)
    files = {p.name: p.read_text() for p in tmp_path.glob("shard-*.jsonl")}
    (tmp_path / "shard-00002.jsonl").unlink()  # the run was cut off during its last shard ...
    (tmp_path / "shard-00000.jsonl").unlink()  # ... and an earlier shard is lost too
    resumed = generate(tiny_models["a"], tmp_path)
    assert resumed == first
    assert {p.name: p.read_text() for p in tmp_path.glob("shard-*.jsonl")} == files


def test_finished_output_needs_no_model(tiny_models: dict[str, str], tmp_path: Path) -> None:
    first = generate(tiny_models["a"], tmp_path)
    assert generate(str(tmp_path / "no-such-model"), tmp_path) == first


def test_generate_is_reproducible_per_seed_and_leaves_global_rng(tiny_models: dict[str, str], tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    one = generate(tiny_models["a"], tmp_path / "one", seed=5)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    again = generate(tiny_models["a"], tmp_path / "again", seed=5)
    other = generate(tiny_models["a"], tmp_path / "other", seed=6)
    assert one == again
    assert [r["responses"] for r in one] != [r["responses"] for r in other]


def test_temperature_zero_is_greedy(tiny_models: dict[str, str], tmp_path: Path) -> None:
    one = generate(tiny_models["b"], tmp_path / "one", seed=1, temperature=0.0)
    two = generate(tiny_models["b"], tmp_path / "two", seed=2, temperature=0.0)
    assert one == two
    assert all(len(set(r["responses"])) == 1 for r in one)
