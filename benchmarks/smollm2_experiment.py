"""Does SPA beat seed-only DPO on a real model? SmolLM2-135M-Instruct in the rule world, over seeds and seed sizes
(docs/real_model.md). Needs the checkpoint of scripts/smollm2_checkpoint.py.

    python benchmarks/smollm2_experiment.py --seeds 42 7 1 --seed-sizes 32 128 512 --jobs 2 \\
        --out runs/smollm2_experiment

Each (run seed, seed size) is one run of recipes/smollm2_spa_cpu.yaml through the real CLI (``run.seed``,
``split.seed_size``; everything else as shipped: 200 evaluation prompts x 2 samples). ``--jobs 2`` runs two at
once, each with one torch thread (on 2 cores, two single-threaded runs finish sooner than two two-threaded runs one
after the other). A finished run is skipped, an unfinished one resumed. Then, per run:

- the gain of each SPA iteration over seed-only DPO (the run's own iteration 0) in gold win rate against the SFT
  model, paired by prompt, with its 95% bootstrap interval over prompts (``spa_recipes.evaluation``);
- the judge's diagnostics (:func:`judge_diagnostics`): for the model that labelled each iteration (seed DPO for
  iteration 1, ...), its implicit reward's agreement with gold on two fixed, held-out sets of labelled pairs
  (the SFT model's two evaluation samples per prompt where gold prefers one; the template pairs of the
  evaluation prompts, which differ only by the rule), and its mean log-ratio to the reference on the SFT model's
  responses (minus an estimate of KL(reference || model)); and from the iteration's own samples, the share of
  prompts whose two samples both follow the rule, both break it, or split.

The tables go to stdout and ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/smollm2_spa_cpu.yaml"


def run_name(seed: int, seed_size: int) -> str:
    return f"seed{seed}_pairs{seed_size}"


def launch(seed: int, seed_size: int, out: Path, threads: int, overrides: list[str]) -> tuple[str, float]:
    """One run through the CLI (resumed when its folder holds an unfinished one); its name and wall seconds."""
    name = run_name(seed, seed_size)
    cmd = [sys.executable, "-m", "spa_recipes", "run", RECIPE, f"run.seed={seed}", f"split.seed_size={seed_size}"]
    cmd += [*overrides, f"run.name={name}", f"run.output_dir={out}", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.time()
    with (out / f"{name}.log").open("a") as log:
        result = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {result.returncode}); see {out / f'{name}.log'}")
    return name, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1])
    parser.add_argument("--seed-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each gets cores / jobs torch threads)")
    parser.add_argument("--override", nargs="*", default=[], help="recipe overrides applied to every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "smollm2_experiment")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    # Seed sizes outer: every seed of the shipped setting (the first size) finishes before the next size starts.
    plan = [(seed, size) for size in args.seed_sizes for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, took in pool.map(lambda p: launch(*p, args.out, threads, args.override), plan):
            print(f"{name}: {took:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
