"""The prepared GPU check: SmolLM2-135M through the SPA recipe in bf16 with HF generation, the same with vLLM
generation, and one training stage under FSDP2 in one process; per stage tokens/s, peak memory and the plan's
prediction beside it. ``--cpu``: the same steps at tiny size (the embedded toy world) on this CPU, in float32.

    bash scripts/gpu_check.sh                 # on one GPU (under 8 minutes on an H200)
    bash scripts/gpu_check.sh --cpu           # the same steps on CPU at tiny size (the test suite runs it)

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` of the stage (``peak_gpu_mib`` in the manifest), beside
the plan's prediction less its CUDA runtime term (not allocated by torch); on CPU the stage's peak resident set
(``peak_rss_mib``) beside the plan's CPU prediction. Everything is also written to ``<out>/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's spa_recipes, whatever is installed

SMOLLM2 = REPO / "runs" / "models" / "smollm2-135m-instruct"
GPU_RECIPE = "recipes/smollm2_spa_cpu.yaml"
GPU_OVERRIDES = [
    "models.dtype=bfloat16",
    "iterations=1",
    "noise_detector.lambda=[0.5]",
    "split.prompts_per_iteration=128",
    "split.eval_holdout=64",
    "generation.batch_size=64",
]
CPU_RECIPE = "recipes/tiny_spa.yaml"
CPU_OVERRIDES = [  # the tiny world, smaller still: the whole check in well under 2 minutes on 2 cores
    "iterations=1",
    "noise_detector.lambda=[0.5]",
    "data.num_prompts=200",
    "data.sft_demonstrations=256",
    "training.sft.epochs=1",
    "split.seed_size=32",
    "split.prompts_per_iteration=64",
    "split.eval_holdout=32",
]
FSDP_OVERRIDES = ["iterations=0", "evaluation.evaluator=null"]  # split, [sft,] seed_dpo, report
VLLM_CPU = ["generation.kv_cache_memory_bytes=1073741824"]


def spa(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "spa_recipes", *args]


def fsdp_processes(cpu: bool) -> int:
    """One process on a GPU; on CPU two: accelerate makes a CPU launch FSDP only over a gloo group of several
    processes (tests/fsdp_on_cpu.py lifts its GPU-only gate, not that one), and one process runs plain ``single``."""
    return 2 if cpu else 1


def fsdp_launch(cpu: bool) -> list[str]:
    """``accelerate launch`` of the shipped FSDP2 config (on CPU through the test launcher)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp.yaml"]
    launch += ["--num_processes", str(fsdp_processes(cpu))]
    if cpu:
        return [*launch, "--mixed_precision", "no", str(REPO / "tests" / "fsdp_on_cpu.py")]
    return [*launch, "-m", "spa_recipes"]


def run_step(name: str, command: list[str], out: Path) -> float:
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.time()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(
            f"gpu_check: {name} failed (exit {result.returncode}); its log: {out / f'{name}.log'}\n"
            f"{result.stderr[-2000:]}"
        )
    return time.time() - started


def tokens_per_s(entry: dict[str, Any]) -> float | None:
    summary = entry.get("summary") or {}
    if summary.get("tokens_per_s"):
        return float(summary["tokens_per_s"])
    if entry.get("seconds") and "responses" in summary and "mean_tokens" in summary:
        return summary["responses"] * summary["mean_tokens"] / entry["seconds"]
    return None


def compare(run_dir: Path, cpu: bool, memory: float, processes: int = 1) -> list[dict[str, Any]]:
    """Per stage: seconds, tokens/s, measured peak and the plan's prediction (MiB)."""
    from spa_recipes.planning import Hardware, make_plan
    from spa_recipes.planning.memory import MIB
    from spa_recipes.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml")
    parallelism = "fsdp2" if processes > 1 else "single"
    plan = make_plan(recipe, Hardware(gpus=processes, memory=memory, cpu=cpu, parallelism=parallelism))
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    rows = []
    for stage in plan.stages:
        entry = manifest.get(stage.name, {})
        predicted = stage.bytes if cpu else stage.bytes - stage.terms[0].bytes  # GPU: allocated, no CUDA runtime
        measured = entry.get("peak_rss_mib" if cpu else "peak_gpu_mib")
        rows.append(
            {
                "stage": stage.name,
                "seconds": entry.get("seconds"),
                "tokens_per_s": tokens_per_s(entry),
                "measured_mib": measured,
                "predicted_mib": round(predicted / MIB, 1),
                "ratio": None if not measured else round(predicted / MIB / measured, 3),
            }
        )
    return rows


def show(name: str, rows: list[dict[str, Any]], cpu: bool) -> None:
    what = "peak RSS" if cpu else "peak GPU"
    print(f"\n{name}: stage, seconds, tokens/s, {what} MiB measured, plan MiB, plan/measured")
    for r in rows:
        tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        measured = f"{r['measured_mib']:.0f}" if r["measured_mib"] is not None else "-"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"  {r['stage']:<16} {seconds:>7} {tps:>9} {measured:>9} {r['predicted_mib']:>9.0f} {ratio:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the same steps at tiny size on this CPU")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check", help="folder of the runs")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cpu = args.cpu
    if not cpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_check: no GPU here (torch.cuda.is_available() is False); run with --cpu for the CPU steps")
        memory = float(torch.cuda.get_device_properties(0).total_memory)
        if not (SMOLLM2 / "config.json").exists():
            run_step("checkpoint", [sys.executable, "scripts/smollm2_checkpoint.py"], out)
        recipe, overrides = GPU_RECIPE, GPU_OVERRIDES
    else:
        from spa_recipes.planning import this_machine_memory

        memory = this_machine_memory()
        recipe, overrides = CPU_RECIPE, CPU_OVERRIDES
    common = [recipe, *overrides, f"run.output_dir={out}", "--no-progress", "--fresh"]
    steps: list[tuple[str, list[str]]] = [("hf", spa(["run", *common, "run.name=hf"]))]
    if importlib.util.find_spec("vllm") is None:
        print("== vllm: skipped: the vllm package is not installed (pip install 'spa-recipes[vllm]')", flush=True)
    else:
        steps.append(
            ("vllm", spa(["run", *common, "run.name=vllm", "generation.name=vllm", *(VLLM_CPU if cpu else [])]))
        )
    steps.append(("fsdp2", [*fsdp_launch(cpu), "run", *common, "run.name=fsdp2", *FSDP_OVERRIDES]))
    report: dict[str, Any] = {"cpu": cpu, "memory_bytes": memory, "runs": {}}
    for name, command in steps:
        seconds = run_step(name, command, out)
        processes = fsdp_processes(cpu) if name == "fsdp2" else 1
        rows = compare(out / name, cpu, memory, processes)
        report["runs"][name] = {"seconds": round(seconds, 1), "stages": rows}
        show(f"{name} ({seconds:.0f} s)", rows, cpu)
        if name == "fsdp2":
            manifest = json.loads((out / name / "manifest.json").read_text())["stages"]
            used = {
                e["summary"].get("parallelism") for e in manifest.values() if "parallelism" in (e.get("summary") or {})
            }
            if used != {"fsdp2"}:
                sys.exit(f"gpu_check: the FSDP2 step trained with parallelism {sorted(map(str, used))}, not fsdp2")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"\nwritten: {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
