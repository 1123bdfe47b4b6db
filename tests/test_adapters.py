"""LoRA adapters (spa_recipes/adapters.py) on a tiny Llama: what trains, the reference, saving, resume, errors.

The multi-process runs (DDP on gloo, FSDP2 through tests/fsdp_on_cpu.py) are in ``test_lora_runs_*`` at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_tiny import make_tiny_model
from safetensors.torch import load_file
from test_training import planted_pairs, run_dpo, section

from spa_recipes.adapters import (
    DisabledAdapterReference,
    adapter_disabled,
    add_adapter,
    load_policy,
    merged_state_dict,
    require_cuda_for_4bit,
)
from spa_recipes.adapters_config import LoraAdapterConfig
from spa_recipes.errors import UserError
from spa_recipes.modeling import load_model
from spa_recipes.noise import RollingQuantileDetector
from spa_recipes.noise_config import RollingQuantileConfig
from spa_recipes.refiners import LabelSmoothingRefiner
from spa_recipes.refiners_config import LabelSmoothingConfig
from spa_recipes.training.checkpoints import list_checkpoints
from spa_recipes.training.loop import read_metrics

ROOT = Path(__file__).resolve().parent.parent
LORA = LoraAdapterConfig(name="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", vocab=64, hidden=32))


def batch(n: int = 3, length: int = 10) -> dict[str, torch.Tensor]:
    ids = torch.randint(8, 60, (n, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_model(str(path)).state_dict())


def test_only_the_adapter_trains_and_the_disabled_forward_is_the_starting_model(tiny: str) -> None:
    start = load_model(tiny, "float32")
    policy = load_policy(tiny, "float32", LORA)
    trained = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert {n.split(".")[-4] for n in trained} == {"q_proj", "v_proj", "down_proj"}
    # The adapter moves the policy; disabled, the policy is the starting model, bit for bit.
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
        moved = policy(**batch()).logits
        with adapter_disabled(policy):
            disabled = policy(**batch()).logits
        reference = DisabledAdapterReference(policy)(**batch(), logits_to_keep=0).logits
        expected = start(**batch()).logits
    assert not torch.allclose(moved, expected)
    assert torch.equal(disabled, expected) and torch.equal(reference, expected)


def test_merged_state_dict_equals_peft_merge(tiny: str) -> None:
    policy = add_adapter(load_model(tiny, "float32"), LORA)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.3)
    ours = merged_state_dict(policy.state_dict(), LORA.scaling)
    peft_merged = policy.merge_and_unload().state_dict()
    assert ours.keys() == peft_merged.keys()
    assert all(torch.allclose(ours[k], peft_merged[k], atol=1e-6) for k in ours)


def test_lora_dpo_trains_the_adapter_saves_merged_weights_and_checkpoints_only_the_adapter(
    tiny: str, tmp_path: Path
) -> None:
    pairs, _ = planted_pairs(32, 0.0)
    training = section(epochs=2.0, learning_rate=2e-2, checkpoint_every=3)
    summary = run_dpo(tiny, tmp_path, pairs, training, adapter=LORA, stop_after=3)
    checkpoint = list_checkpoints(tmp_path / "work")[-1][1]
    saved = torch.load(checkpoint / "model.pt")
    assert saved and all(".lora_" in k for k in saved)  # the frozen base is not in the checkpoint
    summary = run_dpo(tiny, tmp_path, pairs, training, adapter=LORA)
    rows = read_metrics(tmp_path / "work")
    assert summary["steps"] == 8 and summary["resumed_from"] == 3
    assert rows[0]["margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the first step
    assert rows[-1]["margins"] > 0.05 and rows[-1]["loss"] < rows[0]["loss"]
    out, start = weights(tmp_path / "out"), weights(Path(tiny))
    assert out.keys() == start.keys()  # a plain model, as a full fine-tune saves it
    changed = {k for k in out if not torch.equal(out[k], start[k])}
    assert changed and all(k.split(".")[-2] in {"q_proj", "v_proj", "down_proj"} for k in changed)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(24, 0.25)
    training = section(epochs=1.0, batch_size=4, lr_scheduler="cosine", warmup_ratio=0.2, checkpoint_every=2)
    adapter = LORA.model_copy(update={"dropout": 0.1})  # the RNG of dropout is restored too

    def kw() -> dict:
        detector = RollingQuantileDetector(RollingQuantileConfig(k=0.3, window=8, confidence="extrapolated"))
        return dict(adapter=adapter, noise_detector=detector, refiner=LabelSmoothingRefiner(LabelSmoothingConfig()))

    full = run_dpo(tiny, tmp_path / "full", pairs, training, lam=0.5, **kw())
    assert full["extrapolated"]  # DND's reference logits from the policy with the adapter disabled
    stopped = run_dpo(tiny, tmp_path / "cut", pairs, training, lam=0.5, stop_after=3, **kw())
    assert stopped["stopped_early"]
    resumed = run_dpo(tiny, tmp_path / "cut", pairs, training, lam=0.5, **kw())
    assert resumed["resumed_from"] == 3 and resumed["steps"] == full["steps"] == 6
    a, b = weights(tmp_path / "full" / "out"), weights(tmp_path / "cut" / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)
    untimed = [
        [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(tmp_path / d / "work")]
        for d in ("full", "cut")
    ]
    assert untimed[0] == untimed[1]


def test_adapter_only_saving_merges_on_load(tiny: str, tmp_path: Path) -> None:
    pairs, _ = planted_pairs(16, 0.0)
    training = section(learning_rate=2e-2)
    run_dpo(tiny, tmp_path / "merged", pairs, training, adapter=LORA)
    run_dpo(tiny, tmp_path / "adapter", pairs, training, adapter=LORA.model_copy(update={"save": "adapter"}))
    folder = tmp_path / "adapter" / "out"
    assert (folder / "adapter_config.json").exists() and not (folder / "model.safetensors").exists()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(tiny).resolve()
    )
    merged, loaded = weights(tmp_path / "merged" / "out"), weights(folder)
    assert merged.keys() == loaded.keys()
    assert all(torch.allclose(merged[k], loaded[k], atol=1e-6) for k in merged)
    # A chain: a stage that starts from an adapter-only model points to it; loading merges both.
    run_dpo(str(folder), tmp_path / "next", pairs, training, adapter=LORA.model_copy(update={"save": "adapter"}))
    chained = weights(tmp_path / "next" / "out")
    assert any(not torch.equal(chained[k], loaded[k]) for k in loaded)


def test_target_modules_not_in_the_model_is_an_error_naming_the_key(tiny: str) -> None:
    bad = LORA.model_copy(update={"target_modules": ["q_proj", "query_key_value"]})
    with pytest.raises(UserError, match=r"^models\.adapter\.target_modules: query_key_value not among"):
        load_policy(tiny, "float32", bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_qlora_needs_cuda() -> None:
    with pytest.raises(UserError, match=r"models\.adapter\.load_in_4bit: QLoRA .* needs a CUDA GPU"):
        require_cuda_for_4bit(LORA.model_copy(update={"load_in_4bit": True}))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )


def test_cli_refuses_qlora_on_a_machine_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without CUDA")
    result = _cli("validate", "recipes/tiny_spa.yaml", "models.adapter.name=lora", "models.adapter.load_in_4bit=true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: models.adapter.load_in_4bit: QLoRA (a 4-bit base through bitsandbytes) needs a CUDA GPU; this "
        "machine has none: set it to false (LoRA on a base in models.dtype)"
    ]


def test_cli_names_a_target_module_the_model_lacks(tiny: str, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"extends: {ROOT / 'recipes' / 'smollm2_spa_cpu.yaml'}\n"
        f"models: {{sft: {tiny}, adapter: {{name: lora, target_modules: [q_proj, c_attn]}}}}\n"
    )
    result = _cli("validate", str(recipe))
    assert result.returncode == 2, result.stderr
    assert "models.adapter.target_modules: c_attn not among the linear layers of LlamaForCausalLM" in result.stderr


# The tiny recipe, shrunk: one iteration, DND on, enough learning rate for a LoRA adapter to move in a few steps.
LORA_RUN = [
    "models.base.hidden_size=64",
    "models.base.num_layers=2",
    "models.base.intermediate_size=172",
    "data.num_prompts=200",
    "data.sft_demonstrations=600",
    "split.seed_size=16",
    "split.prompts_per_iteration=48",
    "split.eval_holdout=24",
    "iterations=1",
    "noise_detector.lambda=[0.5]",
    "generation.max_new_tokens=16",
    "training.sft.epochs=1",
    "training.seed.epochs=2",
    "training.seed.batch_size=4",  # per process: 2 processes x 4
    "training.seed.learning_rate=2e-3",
    "training.iteration.batch_size=4",
    "training.iteration.learning_rate=2e-3",
    "evaluation.samples_per_prompt=1",
    "models.adapter.name=lora",
    "models.adapter.r=4",
]


def launch(parallelism: str, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``spa-recipe run`` of the shrunk tiny recipe with LoRA, 2 processes: DDP (torchrun) or FSDP2 (accelerate's
    shipped config through tests/fsdp_on_cpu.py)."""
    if parallelism == "ddp":
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "spa_recipes"]
    else:
        config = ROOT / "configs" / "accelerate" / "fsdp.yaml"
        accelerate = ["-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2"]
        launcher = [*accelerate, "--mixed_precision", "no", str(ROOT / "tests" / "fsdp_on_cpu.py")]
    args = ["run", "recipes/tiny_spa.yaml", *LORA_RUN, *extra, f"run.output_dir={out}", "run.name=t", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, *launcher, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def only_adapted_layers_moved(run_dir: Path, stage: str, start: Path) -> None:
    trained, before = weights(run_dir / stage / "model"), weights(start)  # merged: a plain model, as any other
    assert trained.keys() == before.keys()
    changed = {k for k in trained if not torch.equal(trained[k], before[k])}
    assert any("q_proj" in k for k in changed), stage  # all-linear: the attention and MLP layers moved
    assert not any("embed" in k or "norm" in k for k in changed), stage  # nothing else did


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp2"])
def test_lora_runs_under_ddp_and_fsdp2(tmp_path: Path, parallelism: str) -> None:
    result = launch(parallelism, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "t"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for stage, start in (("seed_dpo", "sft"), ("iter1_train", "seed_dpo")):
        summary = manifest["stages"][stage]["summary"]
        assert summary["parallelism"] == parallelism and summary["steps"] == summary["total_steps"] > 0, stage
        only_adapted_layers_moved(run_dir, stage, run_dir / start / "model")


def test_lora_fsdp2_resume_from_a_checkpoint_gives_the_same_model(tmp_path: Path) -> None:
    checkpoints = ["training.iteration.checkpoint_every=2"]
    whole = launch("fsdp2", tmp_path / "whole", *checkpoints)
    assert whole.returncode == 0, whole.stderr[-3000:]
    kill = {"SPA_RECIPES_KILL_AT": "iter1_train/work/checkpoints/step-2"}
    killed = launch("fsdp2", tmp_path / "cut", *checkpoints, env=kill)
    assert killed.returncode != 0
    resumed = launch("fsdp2", tmp_path / "cut", *checkpoints)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed_from 2" in resumed.stdout
    ours, theirs = weights(tmp_path / "cut/t/iter1_train/model"), weights(tmp_path / "whole/t/iter1_train/model")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_lora_fsdp2_on_a_bf16_base_saves_bf16(tmp_path: Path) -> None:
    """The frozen base in bf16 beside float32 adapters in the same FSDP2 units, checkpointing on, DND's reference
    from the adapter-disabled policy."""
    bf16 = ["models.dtype=bfloat16", "training.seed.gradient_checkpointing=true"]
    result = launch("fsdp2", tmp_path, *bf16, "training.iteration.gradient_checkpointing=true")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "t"
    for stage, start in (("seed_dpo", "sft"), ("iter1_train", "seed_dpo")):
        assert json.loads((run_dir / stage / "model" / "config.json").read_text())["dtype"] == "bfloat16"
        saved = load_file(run_dir / stage / "model" / "model.safetensors")
        assert {v.dtype for v in saved.values()} == {torch.bfloat16}
        only_adapted_layers_moved(run_dir, stage, run_dir / start / "model")


def test_adapter_only_models_are_refused_with_vllm_generation() -> None:
    from spa_recipes.recipe import load_recipe
    from spa_recipes.recipe.validation import _adapter
    from spa_recipes.schema import ComponentSpec

    recipe = load_recipe(
        ROOT / "recipes" / "tiny_spa.yaml", ["models.adapter.name=lora", "models.adapter.save=adapter"]
    )
    assert _adapter(recipe) == []
    recipe.generation = ComponentSpec(name="vllm")  # the vllm package is not needed to check the rule
    assert _adapter(recipe) == [
        "models.adapter.save: 'adapter' writes adapter-only models, which generation 'vllm' does not load; "
        "use save: merged"
    ]
