"""Reading a finished (or partly finished) run directory into plain tables.

Everything the report shows comes from files the stages wrote: ``<stage>/eval.json`` (win rates, lengths,
agreement with gold), ``<stage>/counts.json`` (pairs), ``<stage>/work/metrics.jsonl`` (per-step training
metrics) and ``manifest.json`` (per-stage times and summaries). Nothing here imports torch or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spa_recipes.atomic import is_complete, loads_json, read_jsonl
from spa_recipes.errors import UserError
from spa_recipes.evaluation import paired_difference
from spa_recipes.reporting.length_hacking import truncation


@dataclass
class RunData:
    """One run directory, read into tables.

    Attributes:
        run_dir: the run directory.
        name: the run's name (``run.name`` of its recipe).
        results: the ``results.json`` content: ``run``, ``baseline``, ``models`` (one row per evaluated model,
            iteration 0 = seed DPO, with its responses' EOS rate) and ``iterations`` (per iteration: pairs,
            agreement with gold, and the truncation figures of
            :func:`spa_recipes.reporting.length_hacking.truncation`).
        training: per training stage (sft, seed_dpo, iter{i}_train, ...), its per-step metric rows in order.
        iteration_training: per iteration, the name of its training stage (kind ``train``) that finished.
        generation: per iteration, the summary of its generate stage (mean_words, mean_tokens, eos_rate, ...).
        baseline_stats: the summary of ``eval_baseline`` (the baseline's responses), when it ran.
        stage_seconds: (stage, seconds) of every finished stage, in execution order.
        stage_peaks: per finished stage, its peak memory in MiB (``peak_rss_mib``, ``peak_gpu_mib``) where the
            manifest has it (:mod:`spa_recipes.runner.peak_memory`).
        notes: things the report should say about missing pieces.
    """

    run_dir: Path
    name: str
    results: dict[str, Any]
    training: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    iteration_training: dict[int, str] = field(default_factory=dict)
    generation: dict[int, dict[str, Any]] = field(default_factory=dict)
    baseline_stats: dict[str, Any] | None = None
    stage_seconds: list[tuple[str, float]] = field(default_factory=list)
    stage_peaks: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(seconds for _, seconds in self.stage_seconds)


def graph_stage_names(run_dir: Path) -> list[str] | None:
    """The stage names of the run's own recipe (``recipe.yaml``), in execution order; None if it does not load.

    The graph, not the folder listing, decides what belongs to the run: a run re-run with fewer iterations
    keeps the folders of the iterations it no longer has.
    """
    from spa_recipes.recipe import load_recipe
    from spa_recipes.runner.graph import build_graph

    try:
        return [stage.name for stage in build_graph(load_recipe(run_dir / "recipe.yaml"))]
    except UserError:
        return None


def collect_run(run_dir: Path | str, stage_names: list[str] | None = None) -> RunData:
    """Read a run directory into tables.

    Args:
        run_dir: a run directory (``runs/<name>``, with ``recipe.yaml`` and ``manifest.json``).
        stage_names: the stages of the run in execution order (the runner passes its graph's); None: from the
            run's ``recipe.yaml``, or the manifest's stages when that recipe no longer loads.

    Returns:
        The run's tables. Stages that have not finished are left out.

    Raises:
        UserError: ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no recipe.yaml)")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    name = str(recipe.get("run", {}).get("name") or run_dir.name)
    baseline = str(recipe.get("evaluation", {}).get("baseline", "sft"))
    manifest = _read_manifest(run_dir)
    notes: list[str] = []
    if stage_names is None:
        stage_names = graph_stage_names(run_dir)
        if stage_names is None:
            notes.append("recipe.yaml did not load; stages are taken from manifest.json")
            stage_names = list(manifest)
    finished = [s for s in stage_names if manifest.get(s, {}).get("status") == "done" and is_complete(run_dir / s)]
    data = RunData(
        run_dir=run_dir, name=name, results=_results(run_dir, name, baseline, finished, manifest), notes=notes
    )
    for stage in finished:
        entry = manifest[stage]
        kind, iteration = entry.get("kind"), int(entry.get("iteration") or 0)
        data.stage_seconds.append((stage, float(entry.get("seconds") or 0.0)))
        data.stage_peaks[stage] = {k: entry[k] for k in ("peak_rss_mib", "peak_gpu_mib") if entry.get(k) is not None}
        metrics = run_dir / stage / "work" / "metrics.jsonl"
        if metrics.is_file():
            data.training[stage] = _read_rows(metrics)
        if kind == "train":
            data.iteration_training[iteration] = stage
        elif kind == "generate":
            data.generation[iteration] = dict(entry.get("summary") or {})
        elif kind == "eval_baseline":
            data.baseline_stats = dict(entry.get("summary") or {})
    missing = [s for s in stage_names if s not in finished and s != "report"]
    if missing:
        notes.append(f"not finished: {', '.join(missing)}")
    return data


def _results(
    run_dir: Path, name: str, baseline: str, stages: list[str], manifest: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The results.json content: per evaluated model its win rates, with the 95% interval over prompts and, after
    iteration 0, the paired gain over the seed-DPO model; per iteration its pairs, agreement and truncation (the
    interval, gain, EOS rates, truncated shares and the gold-tie figures are None where an older run did not record
    them)."""
    models: list[dict[str, Any]] = []
    outcomes: dict[int, dict[str, float]] = {}
    merged: dict[int, dict[str, Any]] = {}
    samples: dict[int, dict[str, Any]] = {}
    for stage in stages:
        entry = manifest.get(stage, {})
        eval_json, counts_json = run_dir / stage / "eval.json", run_dir / stage / "counts.json"
        if eval_json.is_file():
            m = loads_json(eval_json.read_text())
            models.append(
                {
                    "model": m["model"],
                    "iteration": m["iteration"],
                    "evaluator": m["evaluator"],
                    "win_rate": m["win_rate"],
                    "win_rate_se": m["win_rate_se"],
                    "win_rate_ci": m.get("win_rate_ci"),
                    "lc_win_rate": m["lc_win_rate"],
                    "n": m["n"],
                    "mean_words": m["mean_words_model"],
                    "baseline_mean_words": m["mean_words_baseline"],
                    "eos_rate": m.get("eos_rate_model"),
                    "baseline_eos_rate": m.get("eos_rate_baseline"),
                }
            )
            if m.get("outcomes"):
                outcomes[m["iteration"]] = m["outcomes"]
            if m["iteration"] > 0:
                row = merged.setdefault(m["iteration"], {"iteration": m["iteration"]})
                row.update({k: m.get(k) for k in ("agreement_with_gold", "gold_ties", "agreement_decisive")})
        elif entry.get("kind") == "pairs" and counts_json.is_file():
            i = int(entry["iteration"])
            merged.setdefault(i, {"iteration": i})["pairs"] = loads_json(counts_json.read_text())
        elif entry.get("kind") == "generate":
            i = int(entry["iteration"])
            samples[i] = entry.get("summary") or {}
            merged.setdefault(i, {"iteration": i})
    for i, row in merged.items():
        row.update(truncation(samples.get(i), row.get("pairs")))
    models.sort(key=lambda m: m["iteration"])
    for m in models:
        seed_dpo, own = outcomes.get(0), outcomes.get(m["iteration"])
        m["gain_over_seed_dpo"] = paired_difference(own, seed_dpo) if m["iteration"] and seed_dpo and own else None
    return {"run": name, "baseline": baseline, "models": models, "iterations": [merged[i] for i in sorted(merged)]}


def _read_manifest(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = run_dir / "manifest.json"
    return loads_json(path.read_text()).get("stages", {}) if path.is_file() else {}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path)
