"""The tiny world's results table: gold win rate against the SFT model, mean and spread over seeds.

Runs each recipe through the real CLI once per seed, then reads every run's results.json:

    python benchmarks/tiny_world_table.py --seeds 0 1 2 --out runs/table
    python benchmarks/tiny_world_table.py --seeds 0 --recipes recipes/tiny_spa.yaml   # one quick row set

Rows: seed-only DPO and each SPA iteration (from tiny_spa.yaml), then the final iteration of every other
recipe. Agreement = share of the iteration's self-labelled pairs whose chosen response the gold prefers.

The other recipes differ from the first only after seed DPO, so each of their runs starts as a copy of the
first recipe's run with the same seed: the runner's fingerprints then skip split, sft, seed_dpo and the
baseline evaluation, exactly as a resumed run would, and recompute everything that differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPES = [
    "recipes/tiny_spa.yaml",
    "recipes/tiny/spa_no_sr.yaml",
    "recipes/tiny/spa_sr_no_dnd.yaml",
    "recipes/tiny/external_judge.yaml",
]


def run(recipe: str, seed: int, out: Path, start_from: Path | None = None) -> tuple[dict, float]:
    name = f"{Path(recipe).stem}_s{seed}"
    if start_from is not None and not (out / name).exists():
        shutil.copytree(start_from, out / name)
    started = time.time()
    cmd = [
        sys.executable,
        "-m",
        "spa_recipes",
        "run",
        recipe,
        f"run.seed={seed}",
        f"run.name={name}",
        f"run.output_dir={out}",
        "--no-progress",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return json.loads((out / name / "results.json").read_text()), time.time() - started


def fmt(values: list[float | None], digits: int = 1) -> str:
    """Mean ± sample standard deviation ("-" when a value is missing)."""
    if not values or any(v is None for v in values):
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "table")
    args = parser.parse_args()

    rows: dict[str, dict[str, list]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in args.seeds:
        for recipe in args.recipes:
            first = args.out / f"{Path(args.recipes[0]).stem}_s{seed}"
            results, took = run(recipe, seed, args.out, None if recipe == args.recipes[0] else first)
            seconds.setdefault(recipe, []).append(took)
            agreement = {it["iteration"]: it.get("agreement_with_gold") for it in results["iterations"]}
            models = results["models"]
            if recipe == args.recipes[0]:
                picked = models
            else:
                picked = [m for m in models if m["iteration"] == max(x["iteration"] for x in models)]
            for m in picked:
                label = m["model"] if recipe == args.recipes[0] else f"{Path(recipe).stem}: {m['model']}"
                row = rows.setdefault(label, {"wr": [], "lc": [], "agree": [], "words": []})
                row["wr"].append(m["win_rate"])
                row["lc"].append(m["lc_win_rate"])
                row["words"].append(m["mean_words"])
                row["agree"].append(agreement.get(m["iteration"]))

    print(f"Gold win rate against the SFT model, mean ± sd over seeds {args.seeds} (SFT itself: 50 by definition)\n")
    print("| model | win rate | LC win rate | judge agreement with gold | mean words |")
    print("|---|---|---|---|---|")
    for label, row in rows.items():
        agree = fmt(row["agree"]) if any(a is not None for a in row["agree"]) else "-"
        print(f"| {label} | {fmt(row['wr'])} | {fmt(row['lc'])} | {agree} | {fmt(row['words'])} |")
    print("\nWall time per run (s): " + ", ".join(f"{Path(r).stem} {fmt(s)}" for r, s in seconds.items()))
    print(f"\nReproduce: python benchmarks/tiny_world_table.py --seeds {' '.join(map(str, args.seeds))}")


if __name__ == "__main__":
    main()
