"""The vLLM generation backend for real (opt-in: ``pytest -m vllm``, in the environment that
``scripts/make_vllm_env.sh`` builds): the generate stage's shard layout, sample counts, EOS handling and
seeded reproducibility, in the HF backend's output format.

vLLM's CPU attention has no kernel for head size 8, so these tiny models use 2 heads of 32.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed here: build .venv-vllm with scripts/make_vllm_env.sh and run "
        ".venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny_spa.yaml"
# A CPU engine: a fixed KV cache (no GPU memory to take a share of), eager mode for a quick start.
ENGINE = {"kv_cache_memory_bytes": 1 << 30, "enforce_eager": True}
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")  # both cores (the default binds to one)


def make_model(path: Path, seed: int = 0, eos_logit: float | None = None) -> str:
    from helpers_tiny import make_tiny_model, push_eos

    make_tiny_model(path, hidden=64, heads=2, seed=seed)
    if eos_logit is not None:  # EOS certain (> 0) or impossible (< 0) at every step, as in conftest
        push_eos(path, eos_logit)
    return str(path)


def prompts(n: int) -> list[dict]:
    return [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}]} for i in range(n)]


def vllm_generate(model: str, out: Path, seed: int, n: int = 4, **overrides) -> list[dict]:
    from spa_recipes.generation.config import VLLMGenerationConfig
    from spa_recipes.generation.vllm import VLLMGenerator

    cfg = {"samples_per_prompt": 3, "temperature": 1.0, "max_new_tokens": 6, "shard_size": 3, **ENGINE, **overrides}
    return VLLMGenerator(VLLMGenerationConfig(**cfg)).generate(
        prompts(n), model_path=model, out_dir=out, seed=seed, dtype="float32"
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_row_format(row: dict, k: int, max_new_tokens: int) -> None:
    assert set(row) == {"id", "prompt", "responses", "finished", "num_tokens"}
    assert len(row["responses"]) == len(row["finished"]) == len(row["num_tokens"]) == k
    for text, finished, n in zip(row["responses"], row["finished"], row["num_tokens"], strict=True):
        assert isinstance(text, str) and isinstance(finished, bool) and isinstance(n, int)
        assert "<eos>" not in text and "<pad>" not in text
        assert len(text.split()) <= n <= max_new_tokens
        assert finished == (n < max_new_tokens)  # unfinished means cut by max_new_tokens


def test_generate_stage_layout_counts_format_and_resume(tmp_path: Path) -> None:
    from spa_recipes.atomic import write_jsonl_atomic
    from spa_recipes.generation.config import HFGenerationConfig
    from spa_recipes.generation.hf import HFGenerator
    from spa_recipes.recipe import load_recipe
    from spa_recipes.runner.graph import build_graph
    from spa_recipes.runner.run import RunContext
    from spa_recipes.stages import generate as generate_stage

    overrides = [
        "generation.name=vllm",
        *(f"generation.{k}={v}" for k, v in ENGINE.items()),
        "generation.samples_per_prompt=3",
        "generation.max_new_tokens=6",
        "generation.shard_size=3",
        f"run.output_dir={tmp_path}",
        "run.name=v",
    ]
    recipe = load_recipe(TINY, overrides)
    graph = {s.name: s for s in build_graph(recipe)}
    ctx = RunContext(recipe, tmp_path / "v", graph).context_for(graph["iter1_generate"])
    write_jsonl_atomic(ctx.input("prompts"), prompts(7))
    model_path = ctx.model("policy")
    make_model(Path(model_path))
    out = ctx.out

    summary = generate_stage.run(ctx)
    got = rows(out / "responses.jsonl")
    assert summary["prompts"] == 7 and summary["responses"] == 21
    assert [r["id"] for r in got] == [p["id"] for p in prompts(7)]
    shards = sorted((out / "shards").glob("shard-*.jsonl"))
    assert [len(rows(p)) for p in shards] == [3, 3, 1]
    for row in got:
        check_row_format(row, 3, 6)
    assert len({t for r in got for t in r["responses"]}) > 10  # temperature 1 on a random model: varied

    # The HF backend's rows have the same shape, field by field.
    hf = HFGenerator(HFGenerationConfig(samples_per_prompt=3, temperature=1.0, max_new_tokens=6, shard_size=3))
    hf_rows = hf.generate(
        prompts(7),
        model_path=model_path,
        out_dir=tmp_path / "hf",
        seed=0,
        dtype="float32",
        max_prompt_length=recipe.training.iteration.max_prompt_length,
    )
    for ours, theirs in zip(got, hf_rows, strict=True):
        assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}
        assert ours["prompt"] == theirs["prompt"] and ours["id"] == theirs["id"]

    # Cut off during its last shard, and an earlier shard lost: a resume (a new engine, other batches)
    # writes the same shards, since every prompt carries its own seed.
    files = {p.name: p.read_text() for p in shards}
    (out / "shards" / "shard-00002.jsonl").unlink()
    (out / "shards" / "shard-00000.jsonl").unlink()
    (out / "responses.jsonl").unlink()
    generate_stage.run(ctx)
    assert {p.name: p.read_text() for p in (out / "shards").glob("shard-*.jsonl")} == files
    assert rows(out / "responses.jsonl") == got


def test_seeds_change_the_draws_and_prompts_do_not_share_them(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    one = vllm_generate(model, tmp_path / "one", seed=5, n=6, shard_size=6)
    other = vllm_generate(model, tmp_path / "other", seed=6, n=6, shard_size=6)
    assert [r["responses"] for r in one] != [r["responses"] for r in other]
    # Same prompt text in every row would still be drawn independently: rows differ from each other.
    assert len({tuple(r["responses"]) for r in one}) == len(one)
    for row in one:
        assert len(set(row["responses"])) > 1  # the K samples of a prompt are K draws


def test_eos_handling(tmp_path: Path) -> None:
    ended = vllm_generate(make_model(tmp_path / "always", seed=3, eos_logit=50.0), tmp_path / "a", seed=0)
    assert all(r["finished"] == [True] * 3 and r["num_tokens"] == [0] * 3 and r["responses"] == [""] * 3 for r in ended)
    cut = vllm_generate(make_model(tmp_path / "never", seed=3, eos_logit=-50.0), tmp_path / "n", seed=0)
    assert all(r["finished"] == [False] * 3 and r["num_tokens"] == [6] * 3 for r in cut)
    assert all(0 < len(text.split()) <= 6 for r in cut for text in r["responses"])


def test_greedy_matches_the_hf_backend(tmp_path: Path) -> None:
    from spa_recipes.generation.config import HFGenerationConfig
    from spa_recipes.generation.hf import HFGenerator

    # fp32 on both engines, the same prompt tokens: the same argmax at every step, hence the same text.
    model = make_model(tmp_path / "m", seed=4)
    ours = vllm_generate(model, tmp_path / "v", seed=0, n=6, temperature=0.0)
    hf = HFGenerator(HFGenerationConfig(samples_per_prompt=3, temperature=0.0, max_new_tokens=6, shard_size=3))
    theirs = hf.generate(prompts(6), model_path=model, out_dir=tmp_path / "h", seed=0, dtype="float32")
    for row in ours:
        assert len(set(row["responses"])) == 1  # greedy: K equal copies
    assert [r["responses"] for r in ours] == [r["responses"] for r in theirs]
    assert [r["finished"] for r in ours] == [r["finished"] for r in theirs]
