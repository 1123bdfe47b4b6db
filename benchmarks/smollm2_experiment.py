"""Does SPA beat seed-only DPO on a real model? SmolLM2-135M-Instruct in the rule world, over seeds and seed sizes
(docs/real_model.md). Needs the checkpoint of scripts/smollm2_checkpoint.py.

    python benchmarks/smollm2_experiment.py --seeds 42 7 1 --seed-sizes 32 128 512 --jobs 2 \\
        --out runs/smollm2_experiment

Each (run seed, seed size) is one run of recipes/smollm2_spa_cpu.yaml through the real CLI (``run.seed``,
``split.seed_size``; everything else as shipped: 200 evaluation prompts x 2 samples). ``--jobs 2`` runs two at
once, each with cores / jobs torch threads (``--threads`` to set it); ``--runs 42:32 7:32 1:32`` picks runs. A finished
run is skipped, an unfinished one resumed. Then, per run:

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
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spa_recipes.api import JudgeContext
from spa_recipes.atomic import read_jsonl
from spa_recipes.evaluation import bootstrap_interval
from spa_recipes.judges.config import ImplicitJudgeConfig
from spa_recipes.judges.implicit import ImplicitRewardJudge
from spa_recipes.recipe import load_recipe
from spa_recipes.reporting import collect_run
from spa_recipes.rules.world import RulePrompts, gold_score, parse_prompt

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/smollm2_spa_cpu.yaml"
DIAGNOSTICS = "judge_diagnostics.json"  # in each run's folder: judge_diagnostics(), once per run
Row = dict[str, Any]


def run_name(seed: int, seed_size: int) -> str:
    return f"seed{seed}_pairs{seed_size}"


def launch(seed: int, seed_size: int, out: Path, threads: int, overrides: list[str]) -> tuple[str, float]:
    """One run through the CLI (resumed when its folder holds an unfinished one), then its judge diagnostics
    (:func:`judge_diagnostics`, once: it loads every model of the run) in a process of its own with the same thread
    count; the run's name and wall seconds."""
    name = run_name(seed, seed_size)
    run_dir = out / name
    cmd = [sys.executable, "-m", "spa_recipes", "run", RECIPE, f"run.seed={seed}", f"split.seed_size={seed_size}"]
    cmd += [*overrides, f"run.name={name}", f"run.output_dir={out}", "--no-progress"]
    summarise = [sys.executable, __file__, "--summarise", str(run_dir)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.time()
    for command in (cmd, summarise):
        if command is summarise and (run_dir / DIAGNOSTICS).is_file():
            break
        with (out / f"{name}.log").open("a") as log:
            result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        if result.returncode != 0:  # the other runs go on; the tables need every summary
            print(f"{' '.join(command)} failed (exit {result.returncode}); see {out / f'{name}.log'}", file=sys.stderr)
            break
    return name, time.time() - started


def model_paths(run_dir: Path, iterations: int, sft: str) -> dict[int, str]:
    """Iteration -> its model's folder: -1 the SFT model, 0 seed DPO, i the model trained in iteration i."""
    paths = {-1: str(ROOT / sft), 0: str(run_dir / "seed_dpo" / "model")}
    return paths | {i: str(run_dir / f"iter{i}_train" / "model") for i in range(1, iterations + 1)}


def held_out_rows(run_dir: Path, world: Any) -> tuple[list[Row], list[Row]]:
    """The two fixed sets of labelled held-out pairs of a run: the SFT model's two samples of every evaluation
    prompt (rows as generated), and the templated (chosen, rejected) pair of every evaluation prompt."""
    natural = read_jsonl(run_dir / "eval_baseline" / "responses.jsonl")
    templates = {row["id"]: row for row in world.rows()}
    template = [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "responses": [templates[r["id"]]["chosen"], templates[r["id"]]["rejected"]],
        }
        for r in natural
    ]
    return natural, template


def judge_diagnostics(run_dir: Path) -> dict[int, dict[str, float | None]]:
    """Per iteration i (judged by model i - 1), in percent unless named otherwise:

    - ``agreement_held_out``: the implicit reward of model i - 1 against the judge's reference prefers gold's
      response, on the SFT model's held-out sample pairs where gold prefers one (ties of the reward count half);
    - ``agreement_templates``: the same on the templated held-out pairs (rule applied against not);
    - ``kl``: minus the mean log-ratio log pi_{i-1}(y|x) - log pi_sft(y|x) over the SFT model's held-out
      samples, in nats per response (an estimate of KL(pi_sft || pi_{i-1}): how far training moved the model);
    - ``both_follow`` / ``both_break`` / ``split``: shares of the iteration's prompts whose two samples both
      follow the rule, both break it, or one of each (only split prompts let gold prefer by the rule).
    """
    recipe = load_recipe(run_dir / "recipe.yaml")
    judge = recipe.judge.args
    if not isinstance(judge, ImplicitJudgeConfig):
        raise SystemExit(f"{run_dir}: the diagnostics are for the implicit judge, not '{recipe.judge.name}'")
    world = RulePrompts(recipe.data.args)
    natural, template = held_out_rows(run_dir, world)
    paths = model_paths(run_dir, recipe.iterations, recipe.models.sft)
    # Each model's summed log-probs of every held-out response, once: r = beta (logp_model - logp_reference).
    policy_only = judge.model_copy(update={"reference": "none", "previous_scores": False, "length_normalize": False})
    logps: dict[int, list[list[float]]] = {}
    for i, path in paths.items():
        if i == recipe.iterations:
            continue  # the last model labels nothing
        scorer = ImplicitRewardJudge(
            policy_only,
            JudgeContext(
                policy_path=path,
                dtype=recipe.models.dtype,
                max_prompt_length=recipe.training.iteration.max_prompt_length,
                max_length=recipe.training.iteration.max_length,
            ),
        )
        logps[i] = [row["policy_logps"] for row in scorer.score(natural + template)]
    n = len(natural)

    def reward(i: int, reference: int) -> list[list[float]]:
        return [[a - b for a, b in zip(x, y, strict=True)] for x, y in zip(logps[i], logps[reference], strict=True)]

    out: dict[int, dict[str, float | None]] = {}
    for i in range(1, recipe.iterations + 1):
        reference = {"sft": -1, "previous": max(i - 2, -1), "none": None}[judge.reference]
        r = reward(i - 1, reference) if reference is not None else logps[i - 1]
        verdicts = []
        for row, scores in zip(natural, r[:n], strict=True):
            gold = [gold_score(row["prompt"], response) for response in row["responses"]]
            if gold[0] != gold[1]:
                better = 0 if gold[0] > gold[1] else 1
                verdicts.append(1.0 if scores[better] > scores[1 - better] else 0.5 if scores[0] == scores[1] else 0.0)
        templated = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in r[n:]]
        moved = [v for row in reward(i - 1, -1)[:n] for v in row]
        samples = read_jsonl(run_dir / f"iter{i}_generate" / "responses.jsonl")
        follows = [[parse_prompt(s["prompt"])[1].check(y) for y in s["responses"][:2]] for s in samples]
        out[i] = {
            "agreement_held_out": 100 * statistics.mean(verdicts) if verdicts else None,
            "held_out_decisive_pairs": len(verdicts),
            "agreement_templates": 100 * statistics.mean(templated),
            "kl": -statistics.mean(moved),
            "both_follow": 100 * statistics.mean(all(f) for f in follows),
            "both_break": 100 * statistics.mean(not any(f) for f in follows),
            "split": 100 * statistics.mean(f[0] != f[1] for f in follows),
        }
    return out


def run_summary(run_dir: Path) -> dict[str, Any]:
    """A finished run's numbers (read with the report's own code, so a run finished by older code reads the same):
    per model its win rate and interval, the paired gain over seed DPO and the per-prompt differences behind it;
    per iteration the self-labels' agreement figures and the judge diagnostics."""
    results = collect_run(run_dir).results
    seed_outcomes = json.loads((run_dir / "eval_seed_dpo" / "eval.json").read_text())["outcomes"]
    models = []
    for m in results["models"]:
        stage = "eval_seed_dpo" if m["iteration"] == 0 else f"iter{m['iteration']}_eval"
        outcomes = json.loads((run_dir / stage / "eval.json").read_text())["outcomes"]
        differences = [100 * (outcomes[k] - seed_outcomes[k]) for k in sorted(seed_outcomes.keys() & outcomes.keys())]
        keep = ("iteration", "win_rate", "win_rate_ci", "gain_over_seed_dpo", "mean_words", "eos_rate")
        models.append({k: m.get(k) for k in keep} | {"differences": differences})
    keep = ("iteration", "agreement_with_gold", "gold_ties", "agreement_decisive")
    iterations = [{k: it.get(k) for k in keep} for it in results["iterations"]]
    diagnostics = json.loads((run_dir / DIAGNOSTICS).read_text())
    for it in iterations:
        it.update(diagnostics[str(it["iteration"])])
    return {"models": models, "iterations": iterations}


def pooled(values_per_run: list[list[float]]) -> str:
    """Mean over runs of each run's mean, with the 95% bootstrap interval over its (run, prompt) units."""
    means = [statistics.mean(v) for v in values_per_run]
    low, high = bootstrap_interval([x for v in values_per_run for x in v])
    return f"{statistics.mean(means):+.1f} [{low:+.1f}, {high:+.1f}]"


def mean_of(values: list[float | None], spec: str = ".1f") -> str:
    present = [v for v in values if v is not None]
    return format(statistics.mean(present), spec) if present else "-"


def tables(summaries: dict[tuple[int, int], dict[str, Any]], seeds: list[int], sizes: list[int]) -> str:
    """The markdown tables of docs/real_model.md."""
    lines = [
        "Gold win rate against the SFT model [95% interval over prompts]; gain = the same minus seed-only DPO's, "
        "paired by prompt.",
        "",
    ]
    for size in sizes:
        runs = [(seed, summaries[(seed, size)]) for seed in seeds if (seed, size) in summaries]
        if not runs:
            continue
        iterations = [m["iteration"] for m in runs[0][1]["models"]]
        lines += [f"### {size} labelled pairs", ""]
        lines += [
            "| run seed | seed-only DPO | " + " | ".join(f"SPA iteration {i}: gain" for i in iterations[1:]) + " |"
        ]
        lines += ["|---|---|" + "---|" * (len(iterations) - 1)]
        for seed, summary in runs:
            cells = []
            for m in summary["models"]:
                if m["iteration"] == 0:
                    cells.append(f"{m['win_rate']:.1f} [{m['win_rate_ci'][0]:.1f}, {m['win_rate_ci'][1]:.1f}]")
                else:
                    g = m["gain_over_seed_dpo"]
                    cells.append(f"{g['difference']:+.1f} [{g['ci'][0]:+.1f}, {g['ci'][1]:+.1f}]")
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        if len(runs) > 1:
            seed_rates = [s["models"][0]["win_rate"] for _, s in runs]
            gains = [pooled([s["models"][k]["differences"] for _, s in runs]) for k in range(1, len(iterations))]
            spread = statistics.stdev(seed_rates)
            lines.append(
                f"| mean of {len(runs)} | {statistics.mean(seed_rates):.1f} (sd {spread:.1f}) | "
                + " | ".join(gains)
                + " |"
            )
        lines += [""]
    lines += [
        "Judge diagnostics, mean over run seeds, per iteration (its pairs were labelled by the model before it): the "
        "self-labels' agreement with gold on the iteration's decisive pairs and the share of its pairs gold ties; "
        "the shares of its prompts whose two samples both follow the rule, both break it, or split; the labelling "
        "model's agreement with gold on the SFT model's held-out decisive pairs and on templated held-out pairs; "
        "and KL(SFT || labelling model) estimated on the SFT model's held-out samples (nats per response).",
        "",
        "| labelled pairs | iteration | agreement, decisive (%) | gold ties (%) | both follow (%) | both break (%) "
        "| split (%) | held-out agreement (%) | template agreement (%) | KL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        runs = [summaries[(seed, size)] for seed in seeds if (seed, size) in summaries]
        for k in range(len(runs[0]["iterations"]) if runs else 0):
            rows = [r["iterations"][k] for r in runs]
            keys = (
                "agreement_decisive",
                "gold_ties",
                "both_follow",
                "both_break",
                "split",
                "agreement_held_out",
                "agreement_templates",
            )
            cells = [mean_of([row.get(key) for row in rows]) for key in keys]
            lines.append(
                f"| {size} | {rows[0]['iteration']} | "
                + " | ".join(cells)
                + f" | {mean_of([row['kl'] for row in rows], '.2f')} |"
            )
    return "\n".join(lines)


def plot(summaries: dict[tuple[int, int], dict[str, Any]], path: Path) -> None:
    """Two panels: each run's gain over seed-only DPO per iteration with its 95% interval; the self-labels'
    agreement with gold on the iteration's decisive pairs and the labelling model's on held-out decisive pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gain_ax, judge_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, ((seed, size), summary) in enumerate(sorted(summaries.items(), key=lambda kv: (kv[0][1], kv[0][0]))):
        models = [m for m in summary["models"] if m["iteration"] > 0]
        x = [m["iteration"] + 0.06 * (k - len(summaries) / 2) for m in models]
        gains = [m["gain_over_seed_dpo"] for m in models]
        y = [g["difference"] for g in gains]
        errors = [
            [max(0.0, v - g["ci"][0]) for v, g in zip(y, gains, strict=True)],
            [max(0.0, g["ci"][1] - v) for v, g in zip(y, gains, strict=True)],
        ]
        line = gain_ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=f"seed {seed}, {size} pairs")
        its = [it["iteration"] for it in summary["iterations"]]
        color = line[0].get_color()
        judge_ax.plot(its, [it["agreement_decisive"] for it in summary["iterations"]], marker="o", color=color)
        judge_ax.plot(
            its, [it["agreement_held_out"] for it in summary["iterations"]], marker="s", linestyle="--", color=color
        )
    gain_ax.axhline(0, color="black", linewidth=1, linestyle=":")
    gain_ax.set(xlabel="SPA iteration", ylabel="gain over seed-only DPO (win-rate points)", xticks=[1, 2, 3])
    gain_ax.set_title("Gain over seed-only DPO, 95% interval over prompts")
    gain_ax.legend(fontsize=8)
    judge_ax.axhline(50, color="black", linewidth=1, linestyle=":")
    judge_ax.set(
        xlabel="SPA iteration (labelled by the model before it)", ylabel="agreement with gold (%)", xticks=[1, 2, 3]
    )
    judge_ax.set_title("Implicit judge on decisive pairs: the iteration's (o), held-out (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1])
    parser.add_argument("--seed-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument(
        "--runs", nargs="+", metavar="SEED:SIZE", help="only these (run seed, seed size) runs, in this order"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, help="torch threads of each run (default: cores / jobs)")
    parser.add_argument("--override", nargs="*", default=[], help="recipe overrides applied to every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "smollm2_experiment")
    parser.add_argument("--summarise", type=Path, help=argparse.SUPPRESS)  # one finished run: its summary file
    args = parser.parse_args()
    if args.summarise:
        (args.summarise / DIAGNOSTICS).write_text(json.dumps(judge_diagnostics(args.summarise)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    # Seed sizes outer: every seed of the shipped setting (the first size) finishes before the next size starts.
    plan = [(seed, size) for size in args.seed_sizes for seed in args.seeds]
    if args.runs:
        plan = [(int(seed), int(size)) for seed, size in (r.split(":") for r in args.runs)]
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, took in pool.map(lambda p: launch(*p, args.out, threads, args.override), plan):
            print(f"{name}: {took:.0f} s", file=sys.stderr)
    missing = [run_name(*p) for p in plan if not (args.out / run_name(*p) / DIAGNOSTICS).is_file()]
    if missing:
        sys.exit(f"no judge diagnostics for {', '.join(missing)}: see their logs in {args.out}, then run this again")
    summaries = {(seed, size): run_summary(args.out / run_name(seed, size)) for seed, size in plan}
    (args.out / "summary.json").write_text(json.dumps({run_name(*k): v for k, v in summaries.items()}, indent=1))
    plot(summaries, args.out / "smollm2_experiment.png")
    seeds = list(dict.fromkeys(seed for seed, _ in plan))
    print(tables(summaries, seeds, list(dict.fromkeys(size for _, size in plan))))
    command = "python benchmarks/smollm2_experiment.py " + " ".join(sys.argv[1:])
    print(f"\nReproduce: {command}")


if __name__ == "__main__":
    main()
