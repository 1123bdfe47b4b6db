"""Multi-process runs (torchrun, gloo on CPU) against a one-process run of the same recipe.

Generation and judging are split by shard across the processes and gathered once; training is
data-parallel; only the main process writes. The checks: the same prompts, every prompt exactly once,
byte-identical responses and pairs when the model is the same (shard seeds), a resume after one rank is
SIGKILLed, and a trained model of the same quality when the global batch is the same. The same again with
FSDP2 (the shipped configs/accelerate/fsdp.yaml, through tests/fsdp_on_cpu.py, which stands in for GPUs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_runner import SHRUNK, TINY, started_stages

ROOT = Path(__file__).resolve().parent.parent
# SHRUNK plus enough seed DPO that the trained models clearly beat pi_init (~60% against it), so that
# "the same quality" is a comparison of something; one iteration keeps it quick.
QUALITY = [
    o for o in SHRUNK if not o.startswith(("iterations", "noise_detector", "split.seed_size", "split.eval_holdout"))
] + [
    "iterations=1",
    "noise_detector.lambda=[0.5]",
    "data.sft_demonstrations=2000",
    "training.sft.learning_rate=2e-3",
    "split.seed_size=32",
    "split.eval_holdout=48",
    "training.seed.epochs=12",
    "evaluation.samples_per_prompt=2",
]
# Two processes with half the per-process batch: the same global batches, so the same optimiser steps.
HALF_BATCH = ["training.sft.batch_size=32", "training.seed.batch_size=8", "training.iteration.batch_size=4"]
ENV = {"OMP_NUM_THREADS": "1"}
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
TRAINED = ("sft", "seed_dpo", "iter1_train")
CHECKPOINTING = ["training.seed.gradient_checkpointing=true", "training.iteration.gradient_checkpointing=true"]


def run_tiny(prefix: list[str], out: Path, args: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess:
    """``run`` of tiny_spa.yaml with ``args`` into ``out/t``, started by ``prefix`` (the CLI, maybe launched)."""
    return subprocess.run(
        [*prefix, "run", str(TINY), *args, f"run.output_dir={out}", "run.name=t", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ENV, **(env or {})},
        timeout=300,
    )


def launch(nproc: int, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``spa-recipe run`` of the quality recipe, under torchrun when ``nproc > 1``."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    return run_tiny([sys.executable, *launcher, "-m", "spa_recipes"], out, [*QUALITY, *extra], env)


def launch_fsdp(out: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``accelerate launch`` of the shipped FSDP config with 2 processes (fp32: no GPU here)."""
    accelerate = ["-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "--num_processes", "2"]
    prefix = [sys.executable, *accelerate, "--mixed_precision", "no", str(ROOT / "tests" / "fsdp_on_cpu.py")]
    return run_tiny(prefix, out, list(overrides), env)


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def win_rates(run_dir: Path) -> dict[str, float]:
    return {m["model"]: m["win_rate"] for m in json.loads((run_dir / "results.json").read_text())["models"]}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one")
    result = launch(1, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "t"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("two")
    # Gradient checkpointing under DDP on the way: it changes memory, not the numbers. The shards are kept to be
    # looked at (a finished stage's resume state is removed otherwise).
    result = launch(2, out, *HALF_BATCH, *CHECKPOINTING, "run.keep_checkpoints=true")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "t", result


def test_two_processes_write_every_prompt_once_and_only_main_writes(
    one_process: Path, two_processes: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    run_dir, result = two_processes
    for name in ("seed.jsonl", "prompts_1.jsonl", "eval.jsonl"):  # the same split
        assert (run_dir / "split" / name).read_text() == (one_process / "split" / name).read_text(), name
    prompt_ids = [r["id"] for r in rows(run_dir / "split" / "prompts_1.jsonl")]
    eval_ids = [r["id"] for r in rows(run_dir / "split" / "eval.jsonl")]
    for path, ids in [
        ("iter1_generate/responses.jsonl", prompt_ids),
        ("iter1_judge/scores.jsonl", prompt_ids),
        ("eval_baseline/responses.jsonl", eval_ids),
        ("iter1_eval/responses.jsonl", eval_ids),
    ]:
        got = rows(run_dir / path)
        assert [r["id"] for r in got] == ids, path  # each prompt exactly once, in order
        assert all(len(r["responses"]) == 2 for r in got), path
    assert len(rows(run_dir / "iter1_pairs" / "pairs.jsonl")) == len(rows(one_process / "iter1_pairs" / "pairs.jsonl"))
    shards = sorted(p.name for p in (run_dir / "iter1_generate" / "shards").glob("shard-*.jsonl"))
    assert shards == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]  # 48 prompts / 16
    # One writer: each stage announced once, one manifest pid, no temporary files left by anyone.
    stages = started_stages(result.stdout)
    assert len(stages) == len(set(stages)) == 11, stages
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {e["status"] for e in manifest["stages"].values()} == {"done"}
    assert (run_dir / "run.log").read_text().count("run t: ") == 1
    assert not [p for p in run_dir.rglob(".tmp-*")]
    for stage in ("sft", "seed_dpo", "iter1_train"):
        assert (run_dir / stage / "model" / "model.safetensors").is_file()
        assert (run_dir / stage / "model" / ".complete").is_file()


def test_data_parallel_training_reaches_the_same_quality(
    one_process: Path, two_processes: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    ours, theirs = win_rates(two_processes[0]), win_rates(one_process)
    assert ours.keys() == theirs.keys() == {"seed_dpo", "iter1_train"}
    assert all(w >= 55 for w in theirs.values()), theirs  # the comparison is of trained models
    for model, rate in theirs.items():
        # Same global batches; only float summation order differs (SE of one win rate here is ~5 points).
        assert abs(ours[model] - rate) <= 8, (model, ours, theirs)
    sft_steps = [json.loads(line)["step"] for line in (two_processes[0] / "sft/work/metrics.jsonl").open()]
    assert len(sft_steps) == len([1 for _ in (one_process / "sft/work/metrics.jsonl").open()])


def test_same_model_gives_byte_identical_responses_and_pairs_and_resumes_after_sigkill(
    one_process: Path, tmp_path: Path
) -> None:
    shutil.copytree(one_process, tmp_path / "t")
    for stage in ("iter1_generate", "iter1_judge", "iter1_pairs", "iter1_train", "iter1_eval", "report"):
        shutil.rmtree(tmp_path / "t" / stage)
    # Rank 1 owns shard 1 of 3: it dies right after writing it; torchrun takes rank 0 down too.
    killed = launch(2, tmp_path, env={"SPA_RECIPES_KILL_AT": "iter1_generate/shards/shard-00001.jsonl"})
    assert killed.returncode != 0
    assert started_stages(killed.stdout) == ["iter1_generate"]  # the one-process stages were kept
    assert (tmp_path / "t" / "iter1_generate" / "shards" / "shard-00001.jsonl").is_file()
    resumed = launch(2, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "iter1_generate (resuming)" in resumed.stdout
    for path in ("iter1_generate/responses.jsonl", "iter1_pairs/pairs.jsonl", "iter1_pairs/counts.json"):
        assert (tmp_path / "t" / path).read_text() == (one_process / path).read_text(), path
    ours, theirs = rows(tmp_path / "t/iter1_judge/scores.jsonl"), rows(one_process / "iter1_judge/scores.jsonl")
    flat = [s for r in ours for s in r["scores"]]
    assert flat == pytest.approx([s for r in theirs for s in r["scores"]], abs=1e-9)


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from spa_recipes.distributed import init_distributed, rank
    from spa_recipes.generation.shards import run_sharded
    init_distributed()
    out = Path(sys.argv[1])
    def fn(index, chunk):
        (out.parent / f"computed-{index}-by-{rank()}").write_text("")
        return [{"id": x, "rank": rank()} for x in chunk]
    got = run_sharded(list(range(10)), 3, out, fn)
    (out.parent / f"returned-{rank()}.json").write_text(json.dumps([r["id"] for r in got]))
""")


@pytest.mark.parametrize("nproc", [2, 3])
def test_run_sharded_deals_out_missing_shards_and_returns_every_item_once(tmp_path: Path, nproc: int) -> None:
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    out = tmp_path / "shards"
    out.mkdir()
    (out / "shards.json").write_text(json.dumps({"shard_size": 3, "num_items": 10}))
    (out / "shard-00001.jsonl").write_text("".join(json.dumps({"id": x, "rank": -1}) + "\n" for x in (3, 4, 5)))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), str(script), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ENV},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for r in range(nproc):
        assert json.loads((tmp_path / f"returned-{r}.json").read_text()) == list(range(10))
    computed = sorted(p.name for p in tmp_path.glob("computed-*"))
    assert [c.split("-")[1] for c in computed] == ["0", "2", "3"]  # shard 1 was on disk: nobody redid it
    assert len({c.split("-")[3] for c in computed}) == min(nproc, 3)  # the missing shards were dealt out


def test_fsdp_trains_sharded_and_saves_whole_models_of_the_same_quality(one_process: Path, tmp_path: Path) -> None:
    result = launch_fsdp(tmp_path, *QUALITY, *HALF_BATCH)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "t"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for stage in TRAINED:
        assert manifest["stages"][stage]["summary"]["parallelism"] == "fsdp2", stage
        ours, theirs = weights(run_dir / stage / "model"), weights(one_process / stage / "model")
        # Whole tensors, gathered from both shards, under the same names (a tied LM head saved once).
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}, stage
    one_manifest = json.loads((one_process / "manifest.json").read_text())
    assert one_manifest["stages"]["sft"]["summary"]["parallelism"] == "single"
    theirs = win_rates(one_process)
    for model, rate in win_rates(run_dir).items():
        assert abs(rate - theirs[model]) <= 8, (model, rate, theirs)


def test_fsdp_resume_from_a_sharded_checkpoint_gives_the_same_model(tmp_path: Path) -> None:
    shrunk = [o for o in SHRUNK if not o.startswith(("iterations", "noise_detector"))]
    shrunk += ["iterations=1", "noise_detector.lambda=[0.5]", *CHECKPOINTING]
    whole = launch_fsdp(tmp_path / "whole", *shrunk)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = launch_fsdp(tmp_path / "cut", *shrunk, env={"SPA_RECIPES_KILL_AT": "iter1_train/work/checkpoints/step-2"})
    assert killed.returncode != 0
    assert (tmp_path / "cut/t/iter1_train/work/checkpoints/step-2/.complete").is_file()
    resumed = launch_fsdp(tmp_path / "cut", *shrunk)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed_from 2" in resumed.stdout
    # Optimiser moments and weights went through gather-to-main and scatter-to-shards: any slip shows here.
    ours, theirs = weights(tmp_path / "cut/t/iter1_train/model"), weights(tmp_path / "whole/t/iter1_train/model")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_fsdp_in_bf16_trains_float32_master_weights_and_saves_bf16(tmp_path: Path) -> None:
    """The paper's full setting on FSDP2: bf16, checkpointing, DND, and the bottom K% of each optimiser batch of
    2 processes x 4 pairs x 2 accumulation steps (flagged ahead of the step by a no-grad pass on both ranks)."""
    shrunk = [o for o in SHRUNK if not o.startswith(("iterations", "noise_detector", "training.iteration.batch"))]
    shrunk += ["iterations=1", "models.dtype=bfloat16", *CHECKPOINTING, "run.keep_checkpoints=true"]
    shrunk += ["noise_detector.name=batch_quantile", "noise_detector.k=0.25", "noise_detector.lambda=[0.5]"]
    shrunk += ["training.iteration.batch_size=4", "training.iteration.gradient_accumulation_steps=2"]
    result = launch_fsdp(tmp_path, *shrunk)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "t"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for stage in TRAINED:
        assert manifest["stages"][stage]["summary"]["parallelism"] == "fsdp2", stage
        assert {v.dtype for v in weights(run_dir / stage / "model").values()} == {torch.bfloat16}, stage
    steps = rows(run_dir / "iter1_train/work/metrics.jsonl")
    assert len(steps) == 3 and all(len(r["flagged_ids"]) == 4 for r in steps)  # floor(0.25 x 16) a step
    assert manifest["stages"]["iter1_train"]["summary"]["extrapolated"]
    # The checkpoint holds the master weights: float32, gathered whole from the shards.
    master = torch.load(run_dir / "iter1_train/work/checkpoints/step-2/model.pt")
    assert {v.dtype for v in master.values()} == {torch.float32}
    assert master.keys() >= weights(run_dir / "iter1_train" / "model").keys()


def test_a_deepspeed_launch_is_refused_before_any_work(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "run", str(TINY), f"run.output_dir={tmp_path}", "run.name=t"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "ACCELERATE_USE_DEEPSPEED": "true"},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "DeepSpeed launches are not supported: use configs/accelerate/fsdp.yaml" in result.stderr
    assert not (tmp_path / "t").exists()
