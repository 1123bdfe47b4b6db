"""End to end: recipes/tiny_spa.yaml wall time, peak memory and seconds per stage; scaling with prompts.

Every run goes through the real CLI (``python -m spa_recipes run ...``) in its own process, into a fresh
folder. Peak memory is the process's peak resident set: the largest of the manifest's per-stage peaks (``peak_rss_mib``;
the runner resets the kernel's high-water mark at each stage start, so ``ru_maxrss`` from ``os.wait4`` alone would
give the last stage's) and ``ru_maxrss``; stage seconds come from the run's manifest.json.

1. The recipe as shipped (3 iterations).
2. Scaling: ``iterations=1`` with ``split.prompts_per_iteration`` = 1x, 2x, 4x the base (500, 1000, 2000),
   the world grown to hold them (``data.num_prompts`` = seed + holdout + the largest) and a smaller SFT
   warm-up (``data.sft_demonstrations=2000``, one epoch: it does not depend on the prompts and only costs
   time). The per-prompt stages (iter1_generate, iter1_judge, iter1_pairs, iter1_train) should grow
   linearly and peak memory stay flat; split, sft, seed DPO and the evaluations do not depend on it.

    .venv/bin/python benchmarks/end_to_end_scaling.py
    .venv/bin/python benchmarks/end_to_end_scaling.py --base-prompts 250 --skip-full
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/tiny_spa.yaml"
PER_PROMPT = ("iter1_generate", "iter1_judge", "iter1_pairs", "iter1_train")


def run(out: Path, name: str, overrides: list[str]) -> tuple[float, float, dict[str, float]]:
    """Run the recipe; ``(wall seconds, peak RSS in MiB, {stage: seconds})``."""
    cmd = [
        sys.executable,
        "-m",
        "spa_recipes",
        "run",
        RECIPE,
        f"run.name={name}",
        f"run.output_dir={out}",
        *overrides,
        "--no-progress",
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    manifest = json.loads((out / name / "manifest.json").read_text())
    stages = {k: v["seconds"] for k, v in manifest["stages"].items() if v.get("seconds") is not None}
    peaks = [v["peak_rss_mib"] for v in manifest["stages"].values() if v.get("peak_rss_mib") is not None]
    return wall, max([usage.ru_maxrss / 1024, *peaks]), stages  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-prompts", type=int, default=500)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-full", action="store_true", help="skip the full 3-iteration run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        out = Path(tmp_name)
        if not args.skip_full:
            wall, rss, stages = run(out, "full", [])
            print(f"{RECIPE} as shipped: wall {wall:.1f}s, peak RSS {rss:.0f} MiB")
            print("| stage | seconds |\n|---|---|")
            for stage, seconds in stages.items():
                print(f"| {stage} | {seconds:.1f} |")
            print(f"| (sum of stages) | {sum(stages.values()):.1f} |\n")
        # tiny_spa.yaml: seed_size 50, eval_holdout 200; one iteration needs one lambda.
        scaling = [
            "iterations=1",
            "noise_detector.lambda=[0.5]",
            "data.sft_demonstrations=2000",
            "training.sft.epochs=1",
            f"data.num_prompts={250 + args.base_prompts * max(args.factors)}",
        ]
        print(f"overrides: {' '.join(scaling)}")
        print(f"Scaling, iterations=1 ({', '.join(PER_PROMPT)} summed):")
        print("| prompts/iteration | wall s | per-prompt stages s | s per 100 prompts | peak RSS MiB |")
        print("|---|---|---|---|---|")
        for factor in args.factors:
            n = args.base_prompts * factor
            wall, rss, stages = run(out, f"scale{n}", [*scaling, f"split.prompts_per_iteration={n}"])
            per_prompt = sum(stages.get(s, 0.0) for s in PER_PROMPT)
            detail = ", ".join(f"{s.removeprefix('iter1_')} {stages.get(s, 0.0):.1f}" for s in PER_PROMPT)
            print(
                f"| {n} ({factor}x) | {wall:.1f} | {per_prompt:.1f} ({detail}) | {100 * per_prompt / n:.2f} "
                f"| {rss:.0f} |",
                flush=True,
            )
    skip = " --skip-full" if args.skip_full else ""
    factors = " ".join(map(str, args.factors))
    print(
        f"reproduce: .venv/bin/python benchmarks/end_to_end_scaling.py --base-prompts {args.base_prompts} "
        f"--factors {factors}{skip}"
    )


if __name__ == "__main__":
    main()
