"""`spa-recipe rehearse`: every GPU preset end to end on CPU, in bf16, with tiny models of its architecture class.

The presets name hub models and a hub dataset; here they are local folders of the same classes (config.json and
tokenizer only, ``helpers_rehearse``) and a Parquet file shaped like UltraFeedback, given as the documented
offline overrides ``models.sft=<folder> data.path=<file>``. No network: ``HF_HUB_OFFLINE=1`` throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_rehearse import corpus, install_in_hub_cache, make_model_folder, make_pairrm_files, make_ultrafeedback

from spa_recipes import tiny_models
from spa_recipes.errors import DataError, RecipeError, UserError
from spa_recipes.recipe import load_recipe
from spa_recipes.rehearse import prepare, rehearse, scale_split
from spa_recipes.tiny_models import tiny_config

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
ROWS = 520  # phi2_spa (4 x 2 pairs an optimiser step) needs 484 usable rows at the presets' proportions
# recipe file -> (architecture family of its models.sft, class the rehearsal must build)
PRESETS = {
    "zephyr_spa.yaml": ("zephyr", "MistralForCausalLM"),
    "zephyr_spa_released_code.yaml": ("zephyr", "MistralForCausalLM"),
    "llama3_spa.yaml": ("llama3", "LlamaForCausalLM"),
    "phi2_spa.yaml": ("phi2", "PhiForCausalLM"),
    "phi3_spa.yaml": ("phi3", "Phi3ForCausalLM"),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Local stand-ins for the presets' hub models (one folder per family) and for UltraFeedback."""
    root = tmp_path_factory.mktemp("hub")
    texts = corpus(ROWS)
    folders = {family: make_model_folder(root, family, texts) for family in ("zephyr", "llama3", "phi2", "phi3")}
    # A hub cache as `hf download` leaves it: the Zephyr SFT's and PairRM's config and tokenizer files, no weights.
    cache = root / "hub_cache"
    pairrm, backbone = make_pairrm_files(root, texts)
    install_in_hub_cache(cache, "alignment-handbook/zephyr-7b-sft-full", folders["zephyr"])
    install_in_hub_cache(cache, "llm-blender/PairRM", pairrm)
    install_in_hub_cache(cache, "microsoft/deberta-v3-large", backbone)
    return {**folders, "cache": cache, "data": make_ultrafeedback(root / "ultrafeedback.parquet", ROWS)}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_models.hub_reachable.cache_clear()
    yield
    tiny_models.hub_reachable.cache_clear()


def cli(*args: str, cwd: Path = REPO, timeout: int = 240, **env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def check_rehearsal(run_dir: Path, recipe_file: str, model_class: str) -> None:
    """Every stage finished, the win rates are there, every saved model is tiny, of the class and in bf16."""
    recipe = load_recipe(RECIPES / recipe_file)
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    expected = 5 + 5 * recipe.iterations  # split, seed_dpo, eval_baseline, eval_seed_dpo, report + 5 per iteration
    assert len(manifest) == expected and all(e["status"] == "done" for e in manifest.values())
    for name, entry in manifest.items():
        if name.endswith("_train") or name == "seed_dpo":
            assert entry["summary"]["steps"] >= 2, (name, entry["summary"])
    results = json.loads((run_dir / "results.json").read_text())
    evaluated = [m for m in results["models"] if m.get("win_rate") is not None]
    assert len(evaluated) == recipe.iterations + 1  # seed DPO and each iteration, against the SFT model
    assert all(0 <= m["win_rate"] <= 100 and m.get("lc_win_rate") is not None for m in evaluated)
    models = [run_dir / "rehearsal" / "sft", run_dir / "seed_dpo" / "model"]
    models += [run_dir / f"iter{i}_train" / "model" for i in range(1, recipe.iterations + 1)]
    for folder in models:
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == [model_class] and config["dtype"] == "bfloat16", folder
        assert config["num_hidden_layers"] == 2 and config["hidden_size"] <= 64
        weights = folder / "model.safetensors"
        assert weights.stat().st_size < 2_000_000  # the test vocabularies are < 4k; Llama-3's 128k is below
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            names = list(f.keys())  # noqa: SIM118 - safe_open is not iterable
            assert {str(f.get_slice(k).get_dtype()) for k in names} == {"BF16"}, folder
    assert not (run_dir.parent / recipe.run.name).exists()  # the real run's directory is never touched


def test_zephyr_rehearses_through_the_cli(hub: dict[str, Path], tmp_path: Path) -> None:
    """The command as a user runs it offline after `hf download` of the config and tokenizer files: the hub ids
    of the recipe resolve from the local cache; the data is a local copy. Exit 0, a one-line verdict."""
    result = cli(
        "rehearse",
        "recipes/zephyr_spa.yaml",
        f"data.path={hub['data']}",
        f"run.output_dir={tmp_path}",
        "--no-progress",
        HF_HUB_CACHE=str(hub["cache"]),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"rehearsal of recipes/zephyr_spa.yaml in {tmp_path / 'zephyr_spa-rehearsal'}" in out
    assert "models.sft: alignment-handbook/zephyr-7b-sft-full -> MistralForCausalLM (mistral), random init" in out
    assert "2 layers, hidden 32, 4 heads (1 kv) of 8, vocab 1500, bfloat16" in out
    assert "evaluation.evaluator (pairrm): llm-blender/PairRM -> tiny DeBERTa-v2 PairRM" in out
    assert "on its own tokenizer" in out
    assert "split: seed_size 2000 -> 8, prompts_per_iteration [8000, 20000, 30000] -> [32, 80, 120]" in out
    assert "generation.max_new_tokens: 300 -> 64" in out
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("rehearsal passed: all 20 stages ran in "), verdict
    assert "seed_dpo 6, iter1_train 8, iter2_train 20, iter3_train 30" in verdict
    check_rehearsal(tmp_path / "zephyr_spa-rehearsal", "zephyr_spa.yaml", "MistralForCausalLM")
    plan = json.loads((tmp_path / "zephyr_spa-rehearsal" / "rehearsal" / "plan.json").read_text())
    assert "split.prompts_per_iteration=[32, 80, 120]" in plan["rehearsal"]


@pytest.mark.parametrize("recipe_file", [r for r in PRESETS if r != "zephyr_spa.yaml"])
def test_every_gpu_preset_rehearses(recipe_file: str, hub: dict[str, Path], tmp_path: Path) -> None:
    family, model_class = PRESETS[recipe_file]
    said: list[str] = []
    outcome = rehearse(
        RECIPES / recipe_file,
        [f"models.sft={hub[family]}", f"data.path={hub['data']}", f"run.output_dir={tmp_path}"],
        progress=False,
        say=said.append,
    )
    assert said[-1] == outcome.verdict and outcome.verdict.startswith("rehearsal passed: all "), said
    assert outcome.plan.recipe.models.dtype == "bfloat16"
    assert any("on the policy's tokenizer, in place of PairRM's own config and tokenizer" in line for line in said)
    check_rehearsal(outcome.plan.run_dir, recipe_file, model_class)


def test_the_one_gpu_lora_preset_rehearses(hub: dict[str, Path], tmp_path: Path) -> None:
    """LoRA on a bf16 base: adapters trained, reference with the adapter disabled, merged bf16 models saved. Its
    8 accumulation steps would need ~1,900 rows at 2 optimiser steps a stage: one step of 4 pairs here."""
    accumulation = [f"training.{s}.gradient_accumulation_steps=1" for s in ("seed", "iteration")]
    outcome = rehearse(
        RECIPES / "llama3_spa_lora_1gpu.yaml",
        [f"models.sft={hub['llama3']}", f"data.path={hub['data']}", f"run.output_dir={tmp_path}", *accumulation],
        progress=False,
        say=lambda line: None,
    )
    assert outcome.verdict.startswith("rehearsal passed: all "), outcome.verdict
    assert outcome.plan.recipe.models.adapter.r == 128
    check_rehearsal(outcome.plan.run_dir, "llama3_spa_lora_1gpu.yaml", "LlamaForCausalLM")


def test_rehearsal_keeps_the_recipe_and_scales_only_what_it_says(hub: dict[str, Path], tmp_path: Path) -> None:
    original = load_recipe(RECIPES / "phi2_spa.yaml")
    plan = prepare(
        RECIPES / "phi2_spa.yaml",
        [f"models.sft={hub['phi2']}", f"data.path={hub['data']}", f"run.output_dir={tmp_path}"],
        max_new_tokens=32,
    )
    r = plan.recipe
    assert r.run.name == "phi2_spa-rehearsal" and plan.run_dir == tmp_path / "phi2_spa-rehearsal"
    assert r.data.name == "hub_preferences" and r.data.args == original.data.args.model_copy(
        update={"path": str(hub["data"])}
    )
    assert r.data.args.system_prompt == "" and r.data.args.prompt_column == "prompt"
    assert r.training == original.training  # batch layout, accumulation, lengths, checkpointing
    for section in ("judge", "pair_selector", "noise_detector", "refiner", "loss"):
        assert getattr(r, section).args == getattr(original, section).args, section
    assert r.generation.args == original.generation.args.model_copy(update={"max_new_tokens": 32})
    # Phi-2's 4 x 2 layout: 16 seed pairs (2 steps an epoch), then the presets' 4 : 10 : 15 prompts.
    assert (r.split.seed_size, r.split.prompts_per_iteration, r.split.eval_holdout) == (16, [64, 160, 240], 4)
    # Partial rotary 0.4: heads 10 wide so that the rotary part (4) is even; the embedding padded past the tokenizer.
    config = json.loads((tmp_path / "phi2_spa-rehearsal" / "rehearsal" / "sft" / "config.json").read_text())
    assert config["head_dim"] == 10 and config["vocab_size"] > 1500 and config["model_type"] == "phi"


def test_a_multi_gpu_layout_is_rehearsed_with_its_optimiser_batch(hub: dict[str, Path], tmp_path: Path) -> None:
    """The released code's header: batch_quantile on 8 GPUs (4 x 1 x 8 = 32 pairs a step). One process alone flags
    floor(0.1 x 4) = 0 and is refused; --processes 8 validates for that launch and keeps its optimiser batch."""
    recipe = RECIPES / "zephyr_spa_released_code.yaml"
    data = make_ultrafeedback(tmp_path / "uf.parquet", 1100)
    args = [f"models.sft={hub['zephyr']}", f"data.path={data}", f"run.output_dir={tmp_path}"]
    args += ["noise_detector.name=batch_quantile"]
    with pytest.raises(RecipeError, match=r"optimiser batch of 4 pairs .* x 1 process\) flags floor\(0\.4\) = 0"):
        prepare(recipe, args)
    plan = prepare(recipe, args, processes=8)
    training = plan.recipe.training
    assert (training.seed.batch_size, training.seed.gradient_accumulation_steps) == (4, 8)
    assert (training.iteration.batch_size, training.iteration.gradient_accumulation_steps) == (4, 8)
    assert plan.notes[0].startswith("a launch of 8 processes: its optimiser batches in one process")
    assert plan.recipe.split.seed_size == 64  # 2 optimiser steps of 32 pairs


def test_judges_with_models_of_their_own_are_substituted(hub: dict[str, Path], tmp_path: Path) -> None:
    """PairRM as the judge (an ablation) and an LLM judge named by path get tiny models too; nothing else changes."""
    common = [f"models.sft={hub['zephyr']}", f"data.path={hub['data']}", f"run.output_dir={tmp_path}"]
    plan = prepare(RECIPES / "ablations" / "pairrm_judge.yaml", common)
    work = tmp_path / "zephyr_iterative_dpo_pairrm-rehearsal" / "rehearsal"
    assert plan.recipe.judge.args.path == str(work / "judge") and plan.recipe.judge.args.backbone is None
    assert plan.recipe.evaluation.evaluator.args.path == str(work / "evaluation_evaluator")
    assert plan.recipe.judge.args.batch_size == 16 and plan.recipe.judge.args.swap_positions
    from spa_recipes.judges.pairrm import load_pairrm

    model, tokenizer = load_pairrm(plan.recipe.judge.args.path, dtype="float32")
    assert sum(p.numel() for p in model.parameters()) < 1_000_000 and "<|candidate1|>" in tokenizer.get_vocab()
    plan = prepare(RECIPES / "ablations" / "llm_judge.yaml", [*common, f"judge.model={hub['llama3']}"])
    judge = Path(plan.recipe.judge.args.model)
    assert judge == tmp_path / "zephyr_iterative_dpo_llm_judge-rehearsal" / "rehearsal" / "judge"
    assert json.loads((judge / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert any(line.startswith(f"judge.model: {hub['llama3']} -> LlamaForCausalLM") for line in plan.notes)


def test_offline_without_the_model_or_the_data_says_what_it_needs(hub: dict[str, Path], tmp_path: Path) -> None:
    result = cli("rehearse", "recipes/zephyr_spa.yaml", f"run.output_dir={tmp_path}", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: models.sft 'alignment-handbook/zephyr-7b-sft-full': not on this machine (not a folder, not in the "
        "Hugging Face cache) and the hub cannot be reached; rehearse needs only its config.json and tokenizer files"
    )
    assert "hf download alignment-handbook/zephyr-7b-sft-full --include '*.json'" in lines[0]
    assert "models.sft=/path/to/folder" in lines[0]
    with pytest.raises(DataError, match=r"data.path 'argilla/ultrafeedback-binarized-preferences-cleaned': .*"
                       r"data.path=/path/to/file.parquet"):  # fmt: skip
        prepare(RECIPES / "zephyr_spa.yaml", [f"models.sft={hub['zephyr']}", f"run.output_dir={tmp_path}"])


def test_a_failing_stage_is_named_in_the_verdict(
    hub: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import spa_recipes.stages.split as split_stage

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(split_stage, "KIND", dataclasses.replace(split_stage.KIND, run=broken))
    said: list[str] = []
    overrides = [f"models.sft={hub['zephyr']}", f"data.path={hub['data']}", f"run.output_dir={tmp_path}"]
    with pytest.raises(RuntimeError, match="boom"):
        rehearse(RECIPES / "zephyr_spa_released_code.yaml", overrides, progress=False, say=said.append)
    assert said[-1].startswith("rehearsal FAILED at stage split after "), said[-1]
    assert "RuntimeError: boom (" in said[-1] and "test_rehearse.py" in said[-1]
    traceback_file = tmp_path / "zephyr_spa_released_code-rehearsal" / "rehearsal" / "traceback.txt"
    assert "RuntimeError: boom" in traceback_file.read_text()
    # A folder that is not a rehearsal's is never emptied.
    (tmp_path / "mine-rehearsal").mkdir()
    with pytest.raises(UserError, match="is not a rehearsal's"):
        prepare(RECIPES / "zephyr_spa.yaml", [*overrides, "run.name=mine"])


def test_a_tokenizer_without_chat_template_is_one_line(hub: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "no_template"
    shutil.copytree(hub["zephyr"], folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(UserError, match=f"models.sft: tokenizer '{folder}' has no chat template"):
        prepare(RECIPES / "zephyr_spa.yaml", [f"models.sft={folder}", f"run.output_dir={tmp_path}"])


def test_data_too_small_for_the_proportions(hub: dict[str, Path], tmp_path: Path) -> None:
    small = make_ultrafeedback(tmp_path / "small.parquet", 100)
    with pytest.raises(DataError, match=r"needs 242 usable rows .* has 98 "):
        prepare(
            RECIPES / "zephyr_spa.yaml",
            [f"models.sft={hub['zephyr']}", f"data.path={small}", f"run.output_dir={tmp_path}"],
        )


def test_scale_split_keeps_proportions_and_min_steps() -> None:
    recipe = load_recipe(RECIPES / "zephyr_spa.yaml")
    split = scale_split(recipe, usable=60_000)
    assert (split.seed_size, split.prompts_per_iteration, split.eval_holdout) == (8, [32, 80, 120], 2)
    assert split.factor == pytest.approx(0.004) and split.rows == 242
    # Fractions are of the usable rows; the smallest training set sets the factor (here an iteration's prompts).
    fractions = load_recipe(
        RECIPES / "zephyr_spa.yaml",
        ["split.seed_size=0.1", "split.prompts_per_iteration=[0.01, 0.02, 0.04]", "split.eval_holdout=0.05"],
    )
    split = scale_split(fractions, usable=10_000, min_steps=3)
    assert split.prompts_per_iteration == [12, 24, 48] and split.seed_size == 120 and split.eval_holdout == 60
    # Never larger than the recipe.
    tiny = load_recipe(RECIPES / "zephyr_spa.yaml", ["split.seed_size=3", "split.prompts_per_iteration=4"])
    assert scale_split(tiny, usable=100).seed_size == 3


def test_tiny_config_keeps_class_ratios_and_stays_small() -> None:
    """Real-sized configs of the presets' classes shrink to a few MB, even with Llama-3's 128k vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Phi3Config, PhiConfig

    llama3 = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192,
    )  # fmt: skip
    mistral = MistralConfig()  # Mistral-7B's defaults: 32 heads, 8 kv
    phi2 = PhiConfig(
        vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4},
    )  # fmt: skip
    longrope = {  # Phi-3-mini-128k: rotary factor lists of head_dim / 2 = 48
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 48, "long_factor": [2.0] * 48,
    }  # fmt: skip
    phi3 = Phi3Config(
        hidden_size=3072, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=131072,
        original_max_position_embeddings=4096, rope_parameters=longrope,
    )  # fmt: skip
    for config, ratio in [(llama3, 4), (mistral, 4), (phi2, 1), (phi3, 1)]:
        small = tiny_config(config)
        assert type(small) is type(config) and small.num_hidden_layers == 2
        kv = small.num_key_value_heads or small.num_attention_heads
        assert small.num_attention_heads // kv == ratio
        assert small.hidden_size == small.num_attention_heads * small.head_dim
        assert small.vocab_size == config.vocab_size and config.num_hidden_layers == 32  # the original is untouched
        model = AutoModelForCausalLM.from_config(small, dtype=torch.bfloat16)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        assert size < 20 * 2**20, (type(config).__name__, size)
        ids = torch.randint(0, 100, (1, 8))
        assert model(input_ids=ids).logits.shape == (1, 8, config.vocab_size)
    assert tiny_config(phi2).head_dim == 10  # rotary width int(0.4 * 10) = 4, even
    assert len(tiny_config(phi3).rope_parameters["short_factor"]) == 4  # head_dim 8 / 2
