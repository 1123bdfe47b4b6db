"""SPA and its neighbours side by side (docs/methods.md): gold win rate, LC win rate, length, EOS rate, agreement.

Runs each method's recipe through the real CLI once per seed, then reads every run's results.json and manifest:

    python benchmarks/methods_table.py --world tiny --seeds 0 1 2 --out runs/methods_tiny
    python benchmarks/methods_table.py --world smollm2 --seeds 42 7 --methods spa dice spin \\
        --override iterations=2 --out runs/methods_smollm2          # needs scripts/smollm2_checkpoint.py first

Seed-only DPO is not a run of its own: it is iteration 0 (the seed DPO model) of the SPA run. Every other method
starts as a copy of the SPA run with the same seed, so the runner's fingerprints skip what they share (split, sft,
seed DPO, the baseline's evaluation) exactly as a resumed run would, and recompute the rest. The wall time
reported is a whole run's: the sum of its manifest's stage times, shared stages included (measured in the SPA run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tiny_world_table import fmt  # benchmarks/ is on sys.path when a script in it runs

ROOT = Path(__file__).resolve().parent.parent
# The length-regularised judge on SPA: DICE's score transform, SPA's everything else (a small model's alpha grid).
LENGTH_REGULARIZED = [
    "score_transform.name=length_regularized",
    "score_transform.alpha_max=0.01",
    "score_transform.alpha_step=0.00001",
]
# DICE's whole length control: the transform, and responses cut at max_new_tokens left out of the pairs.
LENGTH_CONTROLLED = [*LENGTH_REGULARIZED, "pair_selector.drop_truncated=true"]
WORLDS = {
    "tiny": {
        "spa": ("recipes/tiny_spa.yaml", []),
        "spa_length_regularized": ("recipes/tiny_spa.yaml", LENGTH_REGULARIZED),
        "spa_length_controlled": ("recipes/tiny_spa.yaml", LENGTH_CONTROLLED),
        "dice": ("recipes/tiny/dice.yaml", []),
        # DICE's replay rule caps an iteration at |seed| (1 - gamma) generated pairs: here all 500, plus 50 replayed.
        "dice_uncapped": ("recipes/tiny/dice.yaml", ["data_mixer.cap_generated=false"]),
        "cream": ("recipes/tiny/cream.yaml", []),
        "self_rewarding": ("recipes/tiny/self_rewarding.yaml", []),
        "spin": ("recipes/tiny/spin.yaml", []),
    },
    "smollm2": {
        "spa": ("recipes/smollm2_spa_cpu.yaml", []),
        "spa_lora": ("recipes/smollm2_spa_lora_cpu.yaml", []),  # its own seed DPO (through an adapter)
        "spa_length_regularized": ("recipes/smollm2_spa_cpu.yaml", LENGTH_REGULARIZED),
        "spa_length_controlled": ("recipes/smollm2_spa_cpu.yaml", LENGTH_CONTROLLED),
        "dice": ("recipes/smollm2/dice.yaml", []),
        "cream": ("recipes/smollm2/cream.yaml", []),
        "self_rewarding": ("recipes/smollm2/self_rewarding.yaml", []),
        "spin": ("recipes/smollm2/spin.yaml", []),
    },
}
# Methods whose seed DPO is not SPA's (it reads a recipe value SPA's does not have): their iteration 0 is a row too.
OWN_SEED_DPO = {"spa_lora"}
COLUMNS = ("win_rate", "lc_win_rate", "mean_words", "eos_rate", "agreement")


def run(recipe: str, name: str, overrides: list[str], out: Path, start_from: Path | None) -> tuple[Path, float]:
    """One run through the CLI (continuing a copy of ``start_from`` when given); its folder and wall seconds."""
    run_dir = out / name
    if start_from is not None and not run_dir.exists():
        shutil.copytree(start_from, run_dir)
    cmd = [sys.executable, "-m", "spa_recipes", "run", recipe, *overrides, f"run.name={name}", f"run.output_dir={out}"]
    started = time.time()
    result = subprocess.run([*cmd, "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return run_dir, time.time() - started


def read(run_dir: Path) -> tuple[list[dict], float]:
    """Per evaluated model (iteration 0 = seed DPO): the table's values; and the run's summed stage seconds."""
    results = json.loads((run_dir / "results.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    agreement = {it["iteration"]: it.get("agreement_with_gold") for it in results["iterations"]}
    rows = [
        {
            "iteration": m["iteration"],
            "win_rate": m["win_rate"],
            "lc_win_rate": m["lc_win_rate"],
            "mean_words": m["mean_words"],
            "eos_rate": m.get("eos_rate"),
            "agreement": agreement.get(m["iteration"]),
        }
        for m in results["models"]
    ]
    return rows, sum(stage.get("seconds") or 0.0 for stage in manifest.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=sorted(WORLDS), default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", help="default: all of the world's (spa always runs first)")
    parser.add_argument("--override", nargs="*", default=[], help="recipe overrides applied to every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "methods")
    args = parser.parse_args()
    recipes = WORLDS[args.world]
    methods = ["spa", *[m for m in (args.methods or recipes) if m != "spa"]]
    unknown = [m for m in methods if m not in recipes]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; {args.world} has {sorted(recipes)}")

    table: dict[tuple[str, int], dict[str, list]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in args.seeds:
        spa_dir = None
        for method in methods:
            recipe, extra = recipes[method]
            overrides = [f"run.seed={seed}", *extra, *args.override]
            run_dir, took = run(recipe, f"{method}_s{seed}", overrides, args.out, spa_dir)
            spa_dir = spa_dir or run_dir
            rows, total = read(run_dir)
            seconds.setdefault(method, []).append(total)
            print(f"{method} seed {seed}: {took:.0f} s here, {total:.0f} s a whole run", file=sys.stderr)
            for row in rows:
                label = "seed-only DPO" if row["iteration"] == 0 else method
                if row["iteration"] == 0 and method in OWN_SEED_DPO:
                    label = f"seed-only DPO ({method})"
                elif row["iteration"] == 0 and method != "spa":
                    continue  # the same seed DPO model as SPA's
                cell = table.setdefault((label, row["iteration"]), {c: [] for c in COLUMNS})
                for column in COLUMNS:
                    cell[column].append(row[column])

    (args.out / "summary.json").write_text(
        json.dumps({f"{k[0]} {k[1]}": v for k, v in table.items()} | {"seconds": seconds}, indent=1)
    )
    print(f"World {args.world}; mean ± sd over seeds {args.seeds}; gold win rate against the SFT model (50 = tie).\n")
    print("| method | iteration | win rate | LC win rate | mean words | EOS rate | judge agreement with gold |")
    print("|---|---|---|---|---|---|---|")

    def order(key: tuple[str, int]) -> tuple[int, int]:  # seed-only DPO first, then the methods as given
        return (methods.index(key[0]) if key[0] in methods else -1, key[1])

    for (label, iteration), cell in sorted(table.items(), key=lambda kv: order(kv[0])):
        values = [fmt(cell[c], 2 if c == "eos_rate" else 1) for c in COLUMNS]
        print(f"| {label} | {iteration} | " + " | ".join(values) + " |")
    print("\nWhole-run wall time (s): " + ", ".join(f"{m} {fmt(s, 0)}" for m, s in seconds.items()))
    command = f"python benchmarks/methods_table.py --world {args.world} --seeds {' '.join(map(str, args.seeds))}"
    command += f" --methods {' '.join(methods)}" if args.methods else ""
    command += f" --override {' '.join(args.override)}" if args.override else ""
    print(f"\nReproduce: {command}")


if __name__ == "__main__":
    main()
