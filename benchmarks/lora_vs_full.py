"""A SmolLM2 DPO stage trained whole against through a LoRA adapter: peak memory and step time, same data.

Each run is a fresh process (its peak resident memory, ``VmHWM``, is its own) that trains
``train_preference`` on the same seed pairs of the rules world (``rule_prompts``: the data of
``recipes/smollm2_spa_cpu.yaml``) for ``--steps`` optimiser steps, in two settings:

- ``seed``: plain DPO, the reference log-probs computed once before training (seed DPO);
- ``dnd``: DND's extrapolated confidence (lambda 0.5), the reference's logits at every step (an SPA iteration).
  Full fine-tuning loads a second copy of the model as the reference; LoRA disables its adapter instead.

Runs alternate (full, lora, full, lora, ...) per setting; the table gives each mode's peak over its runs and
the median step time over every step but each run's first; "training only" is the peak before the trained model
is saved (saving a LoRA stage merges the adapter: new weights for every adapted layer). Two judge runs: the implicit
judge as it is (pi_{i-1} and pi_init loaded one after the other) and, for comparison, both models held at once.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_vs_full.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_vs_full.py --steps 6 --rounds 3 --rank 64 --lora-lr 5e-5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "runs" / "models" / "smollm2-135m-instruct"
MIB = 2**20


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"no {field} in /proc/self/status")


def pairs(n: int) -> list[dict[str, Any]]:
    """The first ``n`` pairs of the rules world (templates: the rule applied vs not), as smollm2_spa_cpu.yaml's."""
    from spa_recipes.rules.config import RulePromptsConfig
    from spa_recipes.rules.world import RulePrompts

    return RulePrompts(RulePromptsConfig(num_prompts=400, rules=["done", "caps"])).rows()[:n]


def child_train(args: argparse.Namespace) -> dict[str, Any]:
    """One training run in this process; its timings and peak."""
    from spa_recipes.adapters_config import LoraAdapterConfig
    from spa_recipes.loss import DPOLoss
    from spa_recipes.loss_config import DPOLossConfig
    from spa_recipes.noise import NoNoiseDetector, RollingQuantileDetector
    from spa_recipes.noise_config import NoneDetectorConfig, RollingQuantileConfig
    from spa_recipes.refiners import LabelSmoothingRefiner, NoRefiner
    from spa_recipes.refiners_config import LabelSmoothingConfig
    from spa_recipes.schema import TrainingSection
    from spa_recipes.training import preference
    from spa_recipes.training.loop import read_metrics
    from spa_recipes.training.preference import train_preference

    saving = preference.save_policy
    before_save: list[float] = []

    def save_policy(*a: Any, **kw: Any) -> None:  # the peak of training alone, before the model is saved
        before_save.append(status_mib("VmHWM"))
        saving(*a, **kw)

    preference.save_policy = save_policy

    baseline = status_mib("VmRSS")
    data = pairs(args.batch_size * args.steps)
    adapter = None
    if args.child == "lora":
        adapter = LoraAdapterConfig(name="lora", r=args.rank, alpha=2 * args.rank, dropout=0.05)
    training = TrainingSection(
        epochs=1.0,
        learning_rate=args.lora_lr if adapter else 5e-6,  # smollm2_spa_lora_cpu.yaml's and smollm2_spa_cpu.yaml's
        lr_scheduler="constant",
        warmup_ratio=0.0,
        batch_size=args.batch_size,
        max_length=112,
        max_prompt_length=80,
    )
    dnd = args.setting == "dnd"
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_preference(
            data,
            policy_path=str(args.model),
            reference_path=str(args.model),
            output_dir=Path(tmp) / "out",
            work_dir=Path(tmp) / "work",
            training=training,
            loss=DPOLoss(DPOLossConfig(beta=0.1)),
            noise_detector=(
                RollingQuantileDetector(RollingQuantileConfig(confidence="extrapolated"))
                if dnd
                else NoNoiseDetector(NoneDetectorConfig())
            ),
            refiner=LabelSmoothingRefiner(LabelSmoothingConfig()) if dnd else NoRefiner(),
            lam=0.5 if dnd else 0.0,
            seed=0,
            dtype="float32",
            progress=False,
            adapter=adapter,
        )
        rows = read_metrics(Path(tmp) / "work")
    return {
        "baseline_mib": baseline,
        "peak_mib": status_mib("VmHWM"),
        "training_peak_mib": before_save[0],
        "step_s": [r["tokens"] / r["tokens_per_s"] for r in rows],
        "final_margins": summary["final_margins"],
    }


def child_judge(args: argparse.Namespace) -> dict[str, Any]:
    """The implicit judge (policy, then reference, one at a time) on generated-style rows; then one model loaded."""
    from spa_recipes.api import JudgeContext
    from spa_recipes.judges.config import ImplicitJudgeConfig
    from spa_recipes.judges.implicit import ImplicitRewardJudge

    baseline = status_mib("VmRSS")
    rows = [{"id": r["id"], "prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]]} for r in pairs(48)]
    context = JudgeContext(
        policy_path=str(args.model), sft_path=str(args.model), dtype="float32", max_prompt_length=80, max_length=112
    )
    if args.setting == "seed":  # the judge as it is: pi_{i-1}, then pi_init
        ImplicitRewardJudge(ImplicitJudgeConfig(batch_size=16), context).score(rows)
    else:  # for comparison: both models in memory at once, each scoring the same sequences
        from spa_recipes.modeling import load_model
        from spa_recipes.sequences import encode_sequences, score_encoded

        tokenizer = load_tokenizer_of(args.model)
        encoded = encode_sequences(
            tokenizer,
            [r["prompt"] for r in rows for _ in r["responses"]],
            [x for r in rows for x in r["responses"]],
            80,
            112,
            group_sizes=[2] * len(rows),
        )
        models = [load_model(str(args.model), "float32") for _ in range(2)]
        for model in models:
            score_encoded(model, encoded, batch_size=16, pad_token_id=tokenizer.pad_token_id, device="cpu")
    return {"baseline_mib": baseline, "peak_mib": status_mib("VmHWM")}


def load_tokenizer_of(path: Path) -> Any:
    from spa_recipes.modeling import load_tokenizer

    return load_tokenizer(str(path))


def run_child(args: argparse.Namespace, mode: str, setting: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--setting", setting, "--model", str(args.model)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--rank", str(args.rank)]
    command += ["--lora-lr", str(args.lora_lr)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lora-lr", type=float, default=1e-4)  # smollm2_spa_lora_cpu.yaml's
    parser.add_argument("--child", choices=["full", "lora", "judge"], help=argparse.SUPPRESS)
    parser.add_argument("--setting", choices=["seed", "dnd"], default="seed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_judge(args) if args.child == "judge" else child_train(args)
        print(json.dumps(result))
        return

    print(f"model {args.model}, {args.steps} steps of {args.batch_size} pairs (max_length 112), LoRA r {args.rank}")
    print(
        f"{'setting':8} {'mode':5} {'peak MiB':>9} {'above start':>12} {'training only':>14} {'step s':>7} "
        f"{'final margin':>13}"
    )
    for setting in ("seed", "dnd"):
        runs: dict[str, list[dict[str, Any]]] = {"full": [], "lora": []}
        for _ in range(args.rounds):
            for mode in ("full", "lora"):
                runs[mode].append(run_child(args, mode, setting))
        for mode, results in runs.items():
            peak = max(r["peak_mib"] for r in results)
            above = max(r["peak_mib"] - r["baseline_mib"] for r in results)
            training = max(r["training_peak_mib"] - r["baseline_mib"] for r in results)
            step = statistics.median(s for r in results for s in r["step_s"][1:])
            margin = statistics.mean(r["final_margins"] for r in results)
            print(f"{setting:8} {mode:5} {peak:9.0f} {above:12.0f} {training:14.0f} {step:7.2f} {margin:13.3f}")
    for setting, what in (("seed", "the implicit judge: pi_{i-1}, then pi_init"), ("dnd", "both models at once")):
        judge = run_child(args, "judge", setting)
        above = judge["peak_mib"] - judge["baseline_mib"]
        print(f"judging 48 x 2 responses, {what}: peak {judge['peak_mib']:.0f} MiB, {above:.0f} above its start")


if __name__ == "__main__":
    main()
