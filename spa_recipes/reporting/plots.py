"""PNG plots of one run, and of several runs overlaid.

matplotlib is imported only here and only when a plot is drawn. Figures are drawn on an Agg canvas
directly (no pyplot): no global backend is switched and nothing needs a display. One module over 400 lines on
purpose: every figure of the report beside the few drawing helpers they share, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spa_recipes.reporting.collect import RunData
from spa_recipes.reporting.length_hacking import TRUNCATED_SHARE_LIMIT

# Training-metric keys (spa_recipes.training.preference / loop) the plots read.
FLAGGED, THRESHOLD = "flagged_fraction", "threshold"
CHOSEN, REJECTED, MARGINS = "rewards_chosen", "rewards_rejected", "margins"
STAGE_COLORS = {
    "split": "#999999",
    "sft": "#8c564b",
    "dpo": "#9467bd",
    "generate": "#1f77b4",
    "judge": "#ff7f0e",
    "pairs": "#bcbd22",
    "train": "#d62728",
    "eval": "#2ca02c",
    "other": "#7f7f7f",
}


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (7.0, 4.2)) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _iteration_label(i: int) -> str:
    return "seed DPO" if i == 0 else f"iter {i}"


def _iteration_axis(ax: Any, iterations: list[int]) -> None:
    ax.set_xticks(iterations, [_iteration_label(i) for i in iterations])
    ax.set_xlabel("model (iteration; 0 = seed DPO)")
    ax.grid(True, alpha=0.3)


def _smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average (per-step values from one small batch are noisy); shorter at the ends."""
    half = window // 2
    return [
        sum(values[max(k - half, 0) : k + half + 1]) / len(values[max(k - half, 0) : k + half + 1])
        for k in range(len(values))
    ]


def _stage_series(
    training: dict[str, list[dict[str, Any]]], stages: list[str], key: str
) -> list[tuple[str, list[int], list[float]]]:
    """Per stage that logged ``key``: (stage, global steps, values), stages laid end to end on one step axis."""
    out, offset = [], 0
    for stage in stages:
        rows = [r for r in training.get(stage, []) if isinstance(r.get(key), int | float)]
        if not rows:
            continue
        out.append((stage, [offset + int(r["step"]) for r in rows], [float(r[key]) for r in rows]))
        offset += max(int(r["step"]) for r in training[stage])
    return out


def _steps_panel(
    ax: Any,
    series: list[tuple[str, list[int], list[float]]],
    *,
    scale: float = 1.0,
    smooth: bool = True,
    colors: dict[str, Any] | None = None,
    label_suffix: str = "",
) -> None:
    """Raw per-step values (faint) and their moving average (bold), one colour per stage, boundaries dotted."""
    for k, (stage, steps, values) in enumerate(series):
        color = (colors or {}).get(stage, f"C{k}")
        values = [v * scale for v in values]
        if smooth and len(values) > 10:
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(
                steps,
                _smooth(values, max(len(values) // 15, 3)),
                color=color,
                linewidth=1.8,
                label=f"{stage}{label_suffix}",
            )
        else:
            ax.plot(steps, values, color=color, linewidth=1.5, label=f"{stage}{label_suffix}")
        if k:
            ax.axvline(steps[0] - 0.5, color="grey", linestyle=":", linewidth=0.8)
    ax.grid(True, alpha=0.3)


# One run ----------------------------------------------------------------------------------------------


def plot_win_rate(data: RunData, path: Path) -> Path | None:
    """Win rate and length-controlled win rate against the baseline per iteration (seed DPO = 0, baseline = 50)."""
    models = data.results["models"]
    if not models:
        return None
    fig, axes = _figure()
    ax = axes[0][0]
    its = [m["iteration"] for m in models]
    rates = [m["win_rate"] for m in models]
    if all(m.get("win_rate_ci") for m in models):  # runs from before intervals have the standard error only
        low, high = zip(*(m["win_rate_ci"] for m in models), strict=True)
        yerr = [[r - lo for r, lo in zip(rates, low, strict=True)], [hi - r for r, hi in zip(rates, high, strict=True)]]
        label = "win rate (95% interval over prompts)"
    else:
        yerr, label = [m["win_rate_se"] for m in models], "win rate (± 1 s.e.)"
    ax.errorbar(its, rates, yerr=yerr, marker="o", capsize=3, label=label)
    ax.plot(its, [m["lc_win_rate"] for m in models], marker="s", linestyle="--", label="length-controlled win rate")
    baseline = data.results["baseline"]
    ax.axhline(50, color="black", linewidth=1, linestyle=":", label=f"{baseline} (baseline) = 50")
    _iteration_axis(ax, its)
    ax.set_ylabel(f"win rate vs {baseline} (%)")
    ax.set_title(f"{data.name}: win rate against {baseline} ({models[0]['evaluator']} evaluator)")
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def plot_agreement(data: RunData, path: Path) -> Path | None:
    """The judge's self-labels' agreement with the evaluator (gold) per iteration; None when never measured."""
    rows = [r for r in data.results["iterations"] if r.get("agreement_with_gold") is not None]
    if not rows:
        return None
    fig, axes = _figure()
    ax = axes[0][0]
    its = [r["iteration"] for r in rows]
    ax.plot(its, [r["agreement_with_gold"] for r in rows], marker="o", label="chosen preferred by the evaluator")
    ax.axhline(50, color="black", linewidth=1, linestyle=":", label="chance = 50")
    ax.set_xticks(its, [f"iter {i}" for i in its])
    ax.set_xlabel("iteration")
    ax.set_ylabel("agreement with gold (%)")
    ax.set_ylim(min(40.0, *(r["agreement_with_gold"] - 5 for r in rows)), 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{data.name}: self-labels' agreement with the evaluator")
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def _iteration_training_stages(data: RunData) -> list[str]:
    return [
        data.iteration_training[i]
        for i in sorted(data.iteration_training)
        if data.iteration_training[i] in data.training
    ]


def plot_noise(data: RunData, path: Path) -> Path | None:
    """Fraction of pairs flagged as noisy and the detector's threshold over the iterations' training steps."""
    stages = _iteration_training_stages(data)
    flagged = _stage_series(data.training, stages, FLAGGED)
    if not flagged:
        return None
    fig, axes = _figure(2, 1, (9.5, 6.0))
    top, bottom = axes[0][0], axes[1][0]
    _steps_panel(top, flagged, scale=100.0)
    top.set_ylabel("pairs flagged (% of batch)")
    top.set_title(f"{data.name}: noise detection per training step (bold: moving average)")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _steps_panel(bottom, _stage_series(data.training, stages, THRESHOLD), smooth=False)
    bottom.set_ylabel("threshold (confidence margin)\nflag below it")
    bottom.set_xlabel("optimiser step (iterations end to end)")
    return _save(fig, path)


def plot_rewards(data: RunData, path: Path) -> Path | None:
    """Implicit rewards of chosen and rejected responses and their margin over the DPO stages' steps."""
    stages = [s for s in data.training if any(CHOSEN in r for r in data.training[s][:1])]
    chosen = _stage_series(data.training, stages, CHOSEN)
    if not chosen:
        return None
    fig, axes = _figure(2, 1, (9.5, 6.0))
    top, bottom = axes[0][0], axes[1][0]
    colors = {s: f"C{k}" for k, s in enumerate(stages)}
    _steps_panel(top, chosen, colors=colors, label_suffix=" chosen")
    rejected = _stage_series(data.training, stages, REJECTED)
    for stage, steps, values in rejected:
        shown = _smooth(values, max(len(values) // 15, 3)) if len(values) > 10 else values
        top.plot(steps, shown, color=colors[stage], linestyle="--", linewidth=1.5, label=f"{stage} rejected")
    top.set_ylabel("implicit reward β·log(π/π_ref)")
    top.set_title(f"{data.name}: DPO rewards (solid chosen, dashed rejected; moving average)")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _steps_panel(bottom, _stage_series(data.training, stages, MARGINS), colors=colors)
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_ylabel("margin (chosen − rejected)")
    bottom.set_xlabel("optimiser step (stages end to end)")
    return _save(fig, path)


def plot_loss(data: RunData, path: Path) -> Path | None:
    """Training loss per step: SFT (cross-entropy) and the DPO stages (seed DPO, each iteration)."""
    sft = [s for s in data.training if s == "sft"]
    dpo = [s for s in data.training if s not in sft and any(CHOSEN in r for r in data.training[s][:1])]
    panels = [(stages, title) for stages, title in ((sft, "SFT"), (dpo, "DPO")) if stages]
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), (6.0 * len(panels), 4.2))
    for ax, (stages, title) in zip(axes[0], panels, strict=True):
        _steps_panel(ax, _stage_series(data.training, stages, "loss"))
        if title == "DPO":
            ax.axhline(0.6931, color="black", linewidth=0.8, linestyle=":", label="ln 2 (no preference)")
            ax.set_ylabel("DPO loss (nats per pair)")
        else:
            ax.set_ylabel("cross-entropy (nats per token)")
        ax.set_xlabel("optimiser step" + (" (stages end to end)" if len(stages) > 1 else ""))
        ax.set_title(f"{data.name}: {title} loss")
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _eos_panel(ax: Any, data: RunData) -> None:
    """Share of responses that ended with EOS per model: its evaluation responses, its samples for the next
    iteration and the chosen ones of that iteration's pairs; the warning level dashed."""
    models = [m for m in data.results["models"] if m.get("eos_rate") is not None]
    if models:
        ax.plot([m["iteration"] for m in models], [100 * m["eos_rate"] for m in models], marker="o", label="evaluation")
    base = (data.baseline_stats or {}).get("eos_rate")
    if base is not None:
        baseline = data.results["baseline"]
        ax.axhline(100 * base, color="black", linestyle=":", linewidth=1, label=f"{baseline} (baseline), evaluation")
    # Iteration i's samples and pairs come from model i - 1: plotted at that model's position.
    for key, marker, label in (
        ("truncated_share", "^", "its samples for the next iteration"),
        ("chosen_truncated_share", "v", "chosen of those pairs"),
    ):
        rows = [r for r in data.results["iterations"] if r.get(key) is not None]
        if rows:
            x, y = [r["iteration"] - 1 for r in rows], [100 * (1 - r[key]) for r in rows]
            ax.plot(x, y, marker=marker, linestyle="--", label=label)
    limit = 100 * (1 - TRUNCATED_SHARE_LIMIT)
    ax.axhline(limit, color="C3", linestyle="--", linewidth=1, label=f"report warns below {limit:.0f}%")
    its = sorted({m["iteration"] for m in data.results["models"]} | {i - 1 for i in data.generation})
    _iteration_axis(ax, its)
    ax.set_ylim(0, 102)
    ax.set_ylabel("responses ending with EOS (%)")
    ax.set_title("EOS rate (the rest: cut at max_new_tokens)")
    ax.legend(loc="lower left", fontsize=8)


def plot_length(data: RunData, path: Path) -> Path | None:
    """Response length per model, the share of responses that ended (EOS rate), and the WR − LC gap."""
    models = data.results["models"]
    if not models and not data.generation:
        return None
    fig, axes = _figure(1, 3, (15.0, 4.2)) if models else _figure(1, 2, (11.0, 4.2))
    left, right = axes[0][0], axes[0][-1]
    _eos_panel(axes[0][1], data)
    its = [m["iteration"] for m in models]
    if models:
        left.plot(its, [m["mean_words"] for m in models], marker="o", label="evaluation responses")
        left.axhline(
            models[0]["baseline_mean_words"],
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"{data.results['baseline']} (baseline), evaluation",
        )
    if data.generation:
        # iter{i}_generate samples from model i-1: plot it at that model's position.
        gen = sorted((i - 1, s["mean_words"]) for i, s in data.generation.items() if "mean_words" in s)
        left.plot(
            [g[0] for g in gen],
            [g[1] for g in gen],
            marker="^",
            linestyle="--",
            label="its samples for the next iteration",
        )
    all_its = sorted(set(its) | {i - 1 for i in data.generation})
    _iteration_axis(left, all_its)
    left.set_ylabel("mean response length (words)")
    left.set_title("response length per model")
    left.legend(loc="best", fontsize=8)
    if models:
        gaps = [m["win_rate"] - m["lc_win_rate"] for m in models]
        bars = right.bar(its, gaps, color=["C3" if g > 0 else "C2" for g in gaps])
        for bar, m in zip(bars, models, strict=True):
            extra = m["mean_words"] - m["baseline_mean_words"]
            right.annotate(
                f"{extra:+.1f} words",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom" if bar.get_height() >= 0 else "top",
                fontsize=8,
            )
        right.axhline(0, color="black", linewidth=0.8)
        right.margins(y=0.12)  # room for the labels
        _iteration_axis(right, its)
        right.set_ylabel("win rate − LC win rate (points)")
        right.set_title("length effect: WR − LC (label: words vs baseline)")
    fig.suptitle(data.name)
    return _save(fig, path)


def _stage_kind(stage: str) -> str:
    for kind in ("generate", "judge", "pairs", "train", "eval"):
        if stage.endswith(kind) or stage.startswith(f"{kind}_"):
            return kind
    return {"seed_dpo": "dpo", "sft": "sft", "split": "split"}.get(stage, "other")


def plot_stage_times(data: RunData, path: Path) -> Path | None:
    """Wall-clock seconds per stage (manifest.json), in execution order, coloured by kind."""
    rows = data.stage_seconds
    if not rows:
        return None
    fig, axes = _figure(size=(7.5, max(3.0, 0.26 * len(rows) + 1.2)))
    ax = axes[0][0]
    names = [s for s, _ in rows][::-1]
    seconds = [t for _, t in rows][::-1]
    ax.barh(names, seconds, color=[STAGE_COLORS[_stage_kind(s)] for s in names])
    for y, t in enumerate(seconds):
        ax.annotate(f"{t:.1f}s", (t, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("wall-clock time (seconds)")
    ax.set_title(f"{data.name}: time per stage (total {data.total_seconds:.0f}s)")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlim(0, max(seconds) * 1.15 or 1)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


RUN_PLOTS: dict[str, Callable[[RunData, Path], Path | None]] = {
    "win_rate": plot_win_rate,
    "agreement": plot_agreement,
    "noise": plot_noise,
    "rewards": plot_rewards,
    "loss": plot_loss,
    "length": plot_length,
    "stage_times": plot_stage_times,
}


def plot_run(data: RunData, out_dir: Path) -> dict[str, Path]:
    """Every plot of one run that it has data for, as ``out_dir/<name>.png``.

    Args:
        data: the run's tables (:func:`spa_recipes.reporting.collect.collect_run`).
        out_dir: folder for the PNGs (created).

    Returns:
        Plot name -> written file, for the plots drawn (a plot without data is left out, and removed).
    """
    written = {}
    for name, plot in RUN_PLOTS.items():
        path = plot(data, out_dir / f"{name}.png")
        if path is not None:
            written[name] = path
        else:
            (out_dir / f"{name}.png").unlink(missing_ok=True)  # an earlier report's plot would no longer be true
    return written


# Several runs -----------------------------------------------------------------------------------------


def _per_model(ax: Any, runs: list[tuple[str, RunData]], key: str) -> list[int]:
    its: set[int] = set()
    for k, (label, data) in enumerate(runs):
        models = data.results["models"]
        if models:
            ax.plot([m["iteration"] for m in models], [m[key] for m in models], marker="o", color=f"C{k}", label=label)
            its |= {m["iteration"] for m in models}
    return sorted(its)


def plot_compare(runs: list[tuple[str, RunData]], out_dir: Path) -> dict[str, Path]:
    """Overlaid plots of several runs: win rates, agreement with gold, response length, flagged fraction.

    Args:
        runs: (label, tables) per run, in the order to show them.
        out_dir: folder for the PNGs (created).

    Returns:
        Plot name -> written file.
    """
    written: dict[str, Path] = {}
    if any(d.results["models"] for _, d in runs):
        fig, axes = _figure(1, 2, (12.0, 4.5))
        for ax, key, title in ((axes[0][0], "win_rate", "win rate"), (axes[0][1], "lc_win_rate", "LC win rate")):
            its = _per_model(ax, runs, key)
            ax.axhline(50, color="black", linewidth=1, linestyle=":", label="baseline = 50")
            _iteration_axis(ax, its)
            ax.set_ylabel(f"{title} vs baseline (%)")
            ax.set_title(title)
            ax.legend(loc="best", fontsize=8)
        low = min(axes[0][0].get_ylim()[0], axes[0][1].get_ylim()[0])
        high = max(axes[0][0].get_ylim()[1], axes[0][1].get_ylim()[1])
        for ax in axes[0]:
            ax.set_ylim(low, high)  # one scale, so that WR and LC can be compared across the panels
        fig.suptitle("win rate against the baseline, per run")
        written["win_rate"] = _save(fig, out_dir / "win_rate.png")

        fig, axes = _figure(size=(7.5, 4.5))
        ax = axes[0][0]
        its = _per_model(ax, runs, "mean_words")
        for k, (_, data) in enumerate(runs):
            if data.results["models"]:
                ax.axhline(data.results["models"][0]["baseline_mean_words"], color=f"C{k}", linestyle=":", linewidth=1)
        _iteration_axis(ax, its)
        ax.set_ylabel("mean response length (words)")
        ax.set_title("evaluation response length per run (dotted: its baseline)")
        ax.legend(loc="best", fontsize=8)
        written["length"] = _save(fig, out_dir / "length.png")

    agreement = [
        (label, [r for r in d.results["iterations"] if r.get("agreement_with_gold") is not None]) for label, d in runs
    ]
    if any(rows for _, rows in agreement):
        fig, axes = _figure(size=(7.5, 4.5))
        ax = axes[0][0]
        its: set[int] = set()
        for k, (label, rows) in enumerate(agreement):
            if rows:
                ax.plot(
                    [r["iteration"] for r in rows],
                    [r["agreement_with_gold"] for r in rows],
                    marker="o",
                    color=f"C{k}",
                    label=label,
                )
                its |= {r["iteration"] for r in rows}
        ax.axhline(50, color="black", linewidth=1, linestyle=":", label="chance = 50")
        ax.set_xticks(sorted(its), [f"iter {i}" for i in sorted(its)])
        ax.set_xlabel("iteration")
        ax.set_ylabel("agreement with gold (%)")
        ax.set_title("self-labels' agreement with the evaluator, per run")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        written["agreement"] = _save(fig, out_dir / "agreement.png")

    flagged = [(label, mean_flagged_by_iteration(d)) for label, d in runs]
    if any(rows for _, rows in flagged):
        fig, axes = _figure(size=(7.5, 4.5))
        ax = axes[0][0]
        its = set()
        for k, (label, rows) in enumerate(flagged):
            if rows:
                ax.plot(list(rows), [100 * v for v in rows.values()], marker="o", color=f"C{k}", label=label)
                its |= set(rows)
        ax.set_xticks(sorted(its), [f"iter {i}" for i in sorted(its)])
        ax.set_xlabel("iteration")
        ax.set_ylabel("pairs flagged as noisy (%, mean over steps)")
        ax.set_ylim(bottom=0)
        ax.set_title("noise detection: mean flagged fraction per iteration")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        written["flagged"] = _save(fig, out_dir / "flagged.png")
    return written


def mean_flagged_by_iteration(data: RunData) -> dict[int, float]:
    """Per iteration, the flagged fraction averaged over its training steps (iterations that logged one)."""
    out = {}
    for i, stage in sorted(data.iteration_training.items()):
        values = [float(r[FLAGGED]) for r in data.training.get(stage, []) if isinstance(r.get(FLAGGED), int | float)]
        if values:
            out[i] = sum(values) / len(values)
    return out
