"""`spa-recipe plan`: memory terms checked against hand-computed numbers on made-up configs, the paper presets'
verdicts on 8 x 80 GB and 1 x 80 GB, user errors; and the prepared GPU check's CPU mode (scripts/gpu_check.sh --cpu)
with per-stage peak memory in the manifest and report, the plan within +-30% of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spa_recipes.planning import Hardware, make_plan, parse_size
from spa_recipes.planning.shapes import shape_from_config
from spa_recipes.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "model_configs"
# A made-up model: h 64, 2 layers, MLP 128, vocab 1000, 4 heads of 16 with 2 kv heads, untied head.
MADE_UP = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "tie_word_embeddings": False,
}
# By hand: a layer 2*64*64 (q, o) + 2*64*32 (k, v) + 3*64*128 (MLP) + 2*64 (norms) = 36,992;
# embeddings 2 * 1000 * 64 = 128,000; P = 2 * 36,992 + 128,000 + 64 (final norm) = 202,048.
P = 202_048
SMALL_RECIPE = [  # the SmolLM2 recipe around the made-up model: bf16, 4 pairs a micro-batch of 112 tokens, DND
    "models.dtype=bfloat16",
    "iterations=1",
    "noise_detector.lambda=[0.5]",
]


def plan_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", "plan", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture
def made_up(tmp_path: Path) -> Path:
    folder = tmp_path / "made_up"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MADE_UP))
    return folder


def test_parameters_of_a_made_up_config_by_hand() -> None:
    shape = shape_from_config(MADE_UP, "made-up")
    assert shape.layer_parameters == 36_992
    assert shape.parameters == P
    assert shape.flop_parameters == P - 64_000  # the input lookup does no matmul
    tied = shape_from_config({**MADE_UP, "tie_word_embeddings": True}, "tied")
    assert tied.parameters == P - 64_000 and tied.flop_parameters == P - 64_000


def test_the_terms_of_a_training_stage_by_hand(made_up: Path) -> None:
    recipe = load_recipe(ROOT / "recipes/smollm2_spa_cpu.yaml", [*SMALL_RECIPE, f"models.sft={made_up}"])
    plan = make_plan(recipe, Hardware(gpus=8, memory=80e9, parallelism="fsdp2"))
    train = {t.name: t.bytes for t in next(s for s in plan.stages if s.name == "iter1_train").terms}
    rows, length = 8, 112  # 4 pairs = 8 rows at max_length 112
    assert train["trained state"] == 16 * P / 8  # fp32 weights, gradients, AdamW moments, sharded 8 ways
    assert train["FSDP2 gathered"] == (2 * 36_992 + 128_000 + 64) * 2  # two blocks and the root unit in bf16
    assert train["DND reference"] == 2 * P
    assert train["activations"] == 2 * rows * length * (10 * 64 + 4 * 128) * 2 == 4_128_768  # no checkpointing
    assert train["logits"] == 12 * rows * length * 1000 == 10_752_000  # bf16 + fp32 copy + log-softmax + DND's
    seed = {t.name: t.bytes for t in next(s for s in plan.stages if s.name == "seed_dpo").terms}
    assert "DND reference" not in seed and seed["logits"] == 10 * rows * length * 1000  # its reference: log-probs first

    checkpointed = load_recipe(
        ROOT / "recipes/smollm2_spa_cpu.yaml",
        [*SMALL_RECIPE, f"models.sft={made_up}", "training.iteration.gradient_checkpointing=true"],
    )
    one = make_plan(checkpointed, Hardware(gpus=1, memory=80e9))  # one process: autocast, float32 residual stream
    terms = {t.name: t.bytes for t in next(s for s in one.stages if s.name == "iter1_train").terms}
    assert terms["trained state"] == 16 * P and terms["16-bit weight copies"] == 2 * P
    assert terms["layer inputs (checkpointed)"] == 2 * rows * length * 64 * 4
    assert terms["one layer recomputed"] == 2 * rows * length * 1152 * 2

    cpu = make_plan(recipe, Hardware(memory=8e9, cpu=True))  # float32 everywhere, the process baseline on top
    judge = {t.name: t.bytes for t in next(s for s in cpu.stages if s.name == "iter1_judge").terms}
    assert judge["process baseline"] == 400 * 2**20  # measured between stages
    split = next(s for s in cpu.stages if s.name == "split").terms[0]
    assert split.bytes == 251 * 2**20 + 2300 * 1000  # the first stage: imports and the tokenizer
    assert judge["model (one at a time)"] == 4 * P
    assert judge["logits"] == 16 * 112 * 1000 * 8  # judge.batch_size 16 rows: fp32 logits + log-softmax
    generate = {t.name: t.bytes for t in next(s for s in cpu.stages if s.name == "iter1_generate").terms}
    sequences, tokens = 32 * 2, 80 + 48  # generation.batch_size x K; max_prompt_length + max_new_tokens
    assert generate["KV cache"] == sequences * tokens * 2 * 2 * 2 * 16 * 4  # 2 x layers x kv heads x head dim
    assert generate["logits"] == sequences * 1000 * 4


def test_time_from_flops_by_hand(made_up: Path) -> None:
    recipe = load_recipe(ROOT / "recipes/smollm2_spa_cpu.yaml", [*SMALL_RECIPE, f"models.sft={made_up}"])
    plan = make_plan(recipe, Hardware(gpus=1, memory=80e9, peak_tflops=100, utilisation=0.5))
    seed = next(s for s in plan.stages if s.name == "seed_dpo")
    n, tokens = P - 64_000, 32 * 2 * 112  # seed_size 32 pairs of 2 rows at max_length
    assert seed.flops == pytest.approx(6 * n * tokens * 2 + 2 * n * tokens)  # 2 epochs trained + 1 reference pass
    assert seed.seconds == pytest.approx(seed.flops / (100e12 * 0.5))


def test_paper_presets_fit_8_x_80_gb_with_the_readme_launch() -> None:
    for recipe, folder, low, high in [
        ("zephyr_spa", "zephyr-7b-sft-full", 45, 52),  # README: ~47 GB + the CUDA runtime
        ("llama3_spa", "llama-3-base-8b-sft", 51, 58),  # README: ~53 GB + the CUDA runtime
    ]:
        result = plan_cli(f"recipes/{recipe}.yaml", f"models.sft={CONFIGS / folder}", "--gpus", "8", "--json")
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert plan["fits"] and "configs/accelerate/fsdp.yaml --num_processes 8" in plan["launch"]
        train = next(s for s in plan["stages"] if s["stage"] == "iter1_train")
        assert low < train["gb"] < high, (recipe, train)
        assert plan["gpu_hours"] > 0


def test_a_paper_preset_on_one_gpu_says_why_not_and_what_fits() -> None:
    result = plan_cli("recipes/zephyr_spa.yaml", f"models.sft={CONFIGS / 'zephyr-7b-sft-full'}", "--gpu-memory", "80GB")
    assert result.returncode == 3, result.stderr
    assert "does NOT fit: seed_dpo needs" in result.stdout and "largest: trained state 115.9 GB" in result.stdout
    assert "would fit: more GPUs: FSDP2 over 4" in result.stdout
    assert "LoRA" in result.stdout


def test_user_errors_are_one_line_exit_2(made_up: Path) -> None:
    bad = plan_cli("recipes/smollm2_spa_cpu.yaml", f"models.sft={made_up}", "--gpu-memory", "eighty")
    assert bad.returncode == 2 and "--gpu-memory 'eighty': not a size" in bad.stderr
    offline = plan_cli("recipes/zephyr_spa.yaml", "models.sft=someorg/not-a-model", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2
    assert "models.sft 'someorg/not-a-model'" in offline.stderr and "plan needs only its config.json" in offline.stderr
    assert len(offline.stderr.strip().splitlines()) == 1


def test_sizes() -> None:
    assert (
        parse_size("80GB", "x") == 80e9 and parse_size("16GiB", "x") == 16 * 2**30 and parse_size("141", "x") == 141e9
    )


def test_gpu_check_cpu_mode_runs_every_step_and_the_plan_is_within_30_percent(tmp_path: Path) -> None:
    out = tmp_path / "check"
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert set(report["runs"]) >= {"hf", "fsdp2"}
    for name, run in report["runs"].items():
        for row in run["stages"]:
            assert row["measured_mib"] and row["measured_mib"] > 100, (name, row)  # peak RSS in every manifest entry
            assert 0.7 <= row["ratio"] <= 1.3, (name, row)
    fsdp = json.loads((out / "fsdp2" / "manifest.json").read_text())["stages"]
    assert fsdp["seed_dpo"]["summary"]["parallelism"] == "fsdp2"
    assert "peak RSS MiB" in (out / "hf" / "report.md").read_text()


def test_the_lora_preset_fits_one_80_gb_gpu() -> None:
    """LoRA: the frozen base in bf16 (2 B a parameter, also the reference: no DND copy), 16 B only for the adapter."""
    sft = f"models.sft={CONFIGS / 'llama-3-base-8b-sft'}"
    result = plan_cli("recipes/llama3_spa_lora_1gpu.yaml", sft, "--gpus", "1", "--gpu-memory", "80GB", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["fits"]
    train = next(s for s in plan["stages"] if s["stage"] == "iter1_train")
    terms = {t["name"]: t["gb"] for t in train["terms"]}
    assert terms["frozen base"] == pytest.approx(2 * 8.03, abs=0.1) and "DND reference" not in terms
    # r 128 on every linear layer of 32 blocks: 128 x (q 2h + k, v 2 x (h + kv) + o 2h + gate, up, down 3 x (h + f))
    h, kv, f = 4096, 1024, 14336
    adapter = 32 * 128 * (2 * h + 2 * (h + kv) + 2 * h + 3 * (h + f))
    assert terms["adapter state"] == pytest.approx(16 * adapter / 1e9, abs=0.01)
    assert 55 < train["gb"] < 70
