"""report.md of one run and of a comparison of runs: tables of the numbers, with the plots embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.reporting.collect import RunData
from spa_recipes.reporting.length_hacking import TRUNCATED_SHARE_LIMIT, length_warnings
from spa_recipes.reporting.plots import mean_flagged_by_iteration

PLOT_TITLES = {
    "win_rate": "Win rate per iteration",
    "agreement": "Self-labels' agreement with gold",
    "noise": "Noise detection over training",
    "rewards": "Chosen / rejected rewards",
    "loss": "Loss curves",
    "length": "Response length",
    "stage_times": "Time per stage",
    "flagged": "Flagged fraction per iteration",
}


def _num(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _percent(share: float | None) -> str:
    return _num(None if share is None else 100 * share)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _image(name: str, plots: dict[str, Path], base: Path) -> list[str]:
    if name not in plots:
        return []
    return ["", f"![{PLOT_TITLES.get(name, name)}]({plots[name].relative_to(base).as_posix()})"]


def _interval(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.1f}, {ci[1]:.1f}]"


def win_rate_rows(results: dict[str, Any]) -> list[list[str]]:
    """The win-rate table's rows: model, iteration, WR [95% interval] (± s.e. for runs from before intervals),
    the paired gain over seed DPO [95% interval], LC WR, WR − LC, n, mean words, baseline words, EOS rate, baseline
    EOS rate (the share of responses that ended; "-" for runs from before it was kept)."""
    return [
        [
            m["model"],
            str(m["iteration"]),
            f"{m['win_rate']:.1f}" + (_interval(ci) if (ci := m.get("win_rate_ci")) else f" ± {m['win_rate_se']:.1f}"),
            "-" if not (g := m.get("gain_over_seed_dpo")) else f"{g['difference']:+.1f}{_interval(g['ci'])}",
            f"{m['lc_win_rate']:.1f}",
            f"{m['win_rate'] - m['lc_win_rate']:+.1f}",
            str(m["n"]),
            f"{m['mean_words']:.1f}",
            f"{m['baseline_mean_words']:.1f}",
            _num(m.get("eos_rate"), ".2f"),
            _num(m.get("baseline_eos_rate"), ".2f"),
        ]
        for m in results["models"]
    ]


def _last(rows: list[dict[str, Any]], key: str) -> Any:
    return rows[-1].get(key) if rows else None


def render_run(data: RunData, plots: dict[str, Path]) -> str:
    """The run's report.md.

    Args:
        data: the run's tables.
        plots: plot name -> PNG written (paths under ``data.run_dir``; linked relative to it).

    Returns:
        Markdown text.
    """
    results, base = data.results, data.run_dir
    lines = [
        f"# {data.name}",
        "",
        f"Run directory `{data.run_dir}`; {len(data.stage_seconds)} stages finished in {data.total_seconds:.0f} s.",
    ]
    lines += ["", *(f"> {note}" for note in data.notes)] if data.notes else []
    for warning in length_warnings(data):  # one blockquote each: consecutive ones would run into one paragraph
        lines += ["", f"> **Warning:** {warning}"]
    lines += [
        "",
        "## Win rate",
        "",
        f"Against the {results['baseline']} model (ties count half); iteration 0 is the seed-DPO model. "
        "Brackets: 95% bootstrap interval over prompts (the evaluation's noise, not the training's: other run seeds "
        "measure that). Gain over seed DPO: the iteration's win rate minus the seed-DPO model's, paired by prompt. "
        "LC = length-controlled: a large WR − LC gap means the wins come with longer responses; "
        "EOS rate = share of responses that ended rather than being cut at max_new_tokens.",
        "",
    ]
    if results["models"]:
        lines += _table(
            [
                "model",
                "iteration",
                "win rate",
                "gain over seed DPO",
                "LC win rate",
                "WR − LC",
                "n",
                "mean words",
                "baseline words",
                "EOS rate",
                "baseline EOS rate",
            ],
            win_rate_rows(results),
        )
    else:
        lines.append("No model has been evaluated (no evaluator, or no evaluation stage has finished).")
    lines += _image("win_rate", plots, base)

    flagged = mean_flagged_by_iteration(data)
    rows = []
    for it in results["iterations"]:
        i, pairs = it["iteration"], it.get("pairs", {})
        train = data.training.get(data.iteration_training.get(i, ""), [])
        rows.append(
            [
                str(i),
                str(pairs.get("pairs", "-")),
                str(pairs.get("kept_tie", "-")),
                _num(it.get("agreement_with_gold")),
                _num(it.get("gold_ties")),
                _num(it.get("agreement_decisive")),
                _num(100 * flagged[i] if i in flagged else None),
                _num(_last(train, "loss"), ".4f"),
                _num(_last(train, "reward_accuracy"), ".2f"),
            ]
        )
    lines += [
        "",
        "## Self-labelling per iteration",
        "",
        "Pairs the judge labelled, how often its chosen response is the one the evaluator prefers (ties half), "
        "the share of pairs the evaluator ties (no label is right or wrong there), the agreement on the rest "
        "(decisive pairs: 50 is chance), the share of pairs the noise detector flagged (mean over the training "
        "steps) and the end of training.",
        "",
    ]
    lines += _table(
        [
            "iteration",
            "pairs",
            "ties kept",
            "agreement with gold (%)",
            "gold ties (%)",
            "agreement, decisive pairs (%)",
            "flagged (%)",
            "final loss",
            "final reward accuracy",
        ],
        rows,
    )
    for name in ("agreement", "noise", "rewards", "loss"):
        lines += _image(name, plots, base)

    lines += ["", "## Response length", ""]
    length_rows = []
    evaluated = {m["iteration"]: m for m in results["models"]}
    for i in sorted(set(evaluated) | {i - 1 for i in data.generation}):
        gen, model = data.generation.get(i + 1, {}), evaluated.get(i, {})
        length_rows.append(
            [
                str(i),
                _num(model.get("mean_words")),
                _num(model.get("eos_rate"), ".2f"),
                _num(gen.get("mean_words")),
                _num(gen.get("mean_tokens")),
                _num(gen.get("eos_rate"), ".2f"),
            ]
        )
    if data.baseline_stats:
        b = data.baseline_stats
        baseline_row = [f"{results['baseline']} (baseline)", _num(b.get("mean_words")), _num(b.get("eos_rate"), ".2f")]
        length_rows.insert(0, [*baseline_row, "-", "-", "-"])
    lines += _table(
        [
            "model (iteration)",
            "evaluation mean words",
            "evaluation EOS rate",
            "samples for next iteration: mean words",
            "mean tokens",
            "EOS rate",
        ],
        length_rows,
    )
    lines += truncation_section(results)
    lines += _image("length", plots, base)

    total = max(data.total_seconds, 1e-9)
    lines += ["", "## Time per stage", ""]
    peaks = data.stage_peaks
    gpu = any("peak_gpu_mib" in p for p in peaks.values())
    header = ["stage", "seconds", "share", "peak RSS MiB", *(["peak GPU MiB"] if gpu else [])]
    rows = [
        [
            s,
            f"{t:.1f}",
            f"{100 * t / total:.0f}%",
            *(_mib(peaks.get(s, {}).get(k)) for k in ("peak_rss_mib", *(["peak_gpu_mib"] if gpu else []))),
        ]
        for s, t in data.stage_seconds
    ]
    lines += _table(header, rows)
    lines += ["", "Peak memory: the main process's, over the stage (resident set; GPU: tensors allocated)."]
    lines += _image("stage_times", plots, base)
    return "\n".join(lines) + "\n"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def truncation_section(results: dict[str, Any]) -> list[str]:
    """The per-iteration truncation table: how often the iteration's samples and its pairs' responses were cut."""
    if not results["iterations"]:
        return []
    rows = [
        [
            str(it["iteration"]),
            _num(it.get("eos_rate"), ".2f"),
            _percent(it.get("truncated_share")),
            _percent(it.get("chosen_truncated_share")),
            _percent(it.get("rejected_truncated_share")),
            _num(it.get("agreement_with_gold")),
        ]
        for it in results["iterations"]
    ]
    lines = [
        "",
        "### Truncation per iteration",
        "",
        "Iteration i's samples come from model i − 1. Truncated = cut at max_new_tokens (1 − EOS rate); the report "
        f"warns above {100 * TRUNCATED_SHARE_LIMIT:.0f}%. Chosen / rejected: share of the iteration's pairs whose "
        'chosen / rejected response was truncated ("-": not recorded by this run). A judge that rewards length '
        "picks truncated responses as chosen more often than as rejected, and its agreement with gold falls.",
        "",
    ]
    return lines + _table(
        [
            "iteration",
            "samples' EOS rate",
            "truncated samples (%)",
            "truncated chosen (%)",
            "truncated rejected (%)",
            "agreement with gold (%)",
        ],
        rows,
    )


def render_comparison(runs: list[tuple[str, RunData]], plots: dict[str, Path], out_dir: Path) -> str:
    """The comparison's report.md: a summary table, a per-iteration table, and the overlaid plots.

    Args:
        runs: (label, tables) per run.
        plots: plot name -> PNG written under ``out_dir``.
        out_dir: the comparison folder (links are relative to it).

    Returns:
        Markdown text.
    """
    lines = [
        f"# Comparison of {len(runs)} runs",
        "",
        "Final model of each run against its baseline (ties count half); Δ = change since the seed-DPO model.",
        "",
    ]
    summary = []
    for label, data in runs:
        models = data.results["models"]
        final = models[-1] if models else {}
        seed = next((m for m in models if m["iteration"] == 0), None)
        agreement = [
            r["agreement_with_gold"] for r in data.results["iterations"] if r.get("agreement_with_gold") is not None
        ]
        flagged = mean_flagged_by_iteration(data)
        truncated = [r["truncated_share"] for r in data.results["iterations"] if r.get("truncated_share") is not None]
        summary.append(
            [
                label,
                f"`{data.run_dir}`",
                str(final.get("model", "-")),
                _num(final.get("win_rate")),
                _num(final.get("lc_win_rate")),
                _num(final["win_rate"] - seed["win_rate"] if final and seed else None, "+.1f"),
                _num(final.get("mean_words")),
                _percent(truncated[-1] if truncated else None),
                _num(agreement[-1] if agreement else None),
                _num(100 * sum(flagged.values()) / len(flagged) if flagged else None),
                f"{data.total_seconds:.0f}",
            ]
        )
    lines += _table(
        [
            "run",
            "directory",
            "final model",
            "win rate",
            "LC win rate",
            "Δ WR",
            "mean words",
            "truncated samples, last iteration (%)",
            "agreement, last iteration (%)",
            "flagged (%)",
            "time (s)",
        ],
        summary,
    )
    for label, data in runs:
        for warning in length_warnings(data):
            lines += ["", f"> **Warning** ({label}): {warning}"]

    iterations = sorted({m["iteration"] for _, d in runs for m in d.results["models"]})
    lines += ["", "## LC win rate / win rate per iteration", ""]
    rows = []
    for label, data in runs:
        by_it = {m["iteration"]: m for m in data.results["models"]}
        rows.append(
            [
                label,
                *(
                    f"{by_it[i]['lc_win_rate']:.1f} / {by_it[i]['win_rate']:.1f}" if i in by_it else "-"
                    for i in iterations
                ),
            ]
        )
    lines += _table(["run", *("seed DPO" if i == 0 else f"iter {i}" for i in iterations)], rows)
    for name in ("win_rate", "agreement", "length", "flagged"):
        lines += _image(name, plots, out_dir)
    return "\n".join(lines) + "\n"
