"""Reports from a real tiny run: report.md, plots/*.png, results.json, `spa-recipe report` and --compare."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_runner import SHRUNK as RUNNER_SHRUNK
from typer.testing import CliRunner

from spa_recipes.atomic import MARKER
from spa_recipes.cli import app
from spa_recipes.reporting import TRUNCATED_SHARE_LIMIT, build_report, collect_run, compare_runs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_spa.yaml"
# tests/test_runner.py's shrunk tiny run, trained a little longer so that the win rates are not all 50
# (later overrides win).
SHRUNK = [
    *RUNNER_SHRUNK,
    "split.eval_holdout=40",
    "training.sft.epochs=2",
    "training.seed.epochs=4",
    "training.iteration.epochs=2",
]
PLOTS = ("win_rate", "agreement", "noise", "rewards", "loss", "length", "stage_times")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real run through the CLI with --no-progress, as a log file would see it: (run dir, its output)."""
    out = tmp_path_factory.mktemp("report")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spa_recipes",
            "run",
            str(TINY),
            *SHRUNK,
            f"run.output_dir={out}",
            "run.name=r",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return out / "r", result.stdout + result.stderr


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def win_rate_table(markdown: str) -> dict[str, tuple[float, list[float], str, float]]:
    """model -> (win rate, its 95% interval, the gain-over-seed-DPO cell, LC win rate) from report.md's win-rate
    table (1 decimal)."""
    rows = {}
    for line in markdown.splitlines():
        match = re.match(r"\| (\S+) \| \d+ \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| ([^|]+) \| ([\d.]+) \|", line)
        if match:
            _, rate, low, high, gain, lc = match.groups()
            rows[match.group(1)] = (float(rate), [float(low), float(high)], gain.strip(), float(lc))
    return rows


def test_finished_run_has_the_full_report(tiny_run: tuple[Path, str]) -> None:
    run_dir, _ = tiny_run
    markdown = (run_dir / "report.md").read_text()
    for name in PLOTS:
        path = run_dir / "plots" / f"{name}.png"
        width, height = png_size(path)
        assert 500 <= width <= 2000 and 300 <= height <= 2000, (name, width, height)
        assert path.stat().st_size > 15_000, name  # a drawn figure, not an empty canvas
        assert f"(plots/{name}.png)" in markdown, name
    assert not list((run_dir / "plots").glob("*.tmp"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["report"]["summary"]["plots"] == len(PLOTS)


def test_report_numbers_are_results_json(tiny_run: tuple[Path, str]) -> None:
    run_dir, _ = tiny_run
    results = json.loads((run_dir / "results.json").read_text())
    assert [m["model"] for m in results["models"]] == ["seed_dpo", "iter1_train", "iter2_train"]
    assert [m["iteration"] for m in results["models"]] == [0, 1, 2]
    for m in results["models"]:
        assert set(m) == {
            "model",
            "iteration",
            "evaluator",
            "win_rate",
            "win_rate_se",
            "win_rate_ci",
            "gain_over_seed_dpo",
            "lc_win_rate",
            "n",
            "mean_words",
            "baseline_mean_words",
            "eos_rate",
            "baseline_eos_rate",
        }
        stage = "eval_seed_dpo" if m["iteration"] == 0 else f"iter{m['iteration']}_eval"
        evaluated = json.loads((run_dir / stage / "eval.json").read_text())
        assert m["win_rate"] == evaluated["win_rate"] and m["mean_words"] == evaluated["mean_words_model"]
        responses = [json.loads(line) for line in (run_dir / stage / "responses.jsonl").read_text().splitlines()]
        finished = [f for row in responses for f in row["finished"]]
        assert m["eos_rate"] == evaluated["eos_rate_model"] == pytest.approx(sum(finished) / len(finished))
        assert m["baseline_eos_rate"] == evaluated["eos_rate_baseline"]
        # Per prompt: id -> mean outcome of its samples.
        assert sorted(evaluated["outcomes"]) == sorted(row["id"] for row in responses)
        assert m["win_rate_ci"] == evaluated["win_rate_ci"]
        assert m["win_rate_ci"][0] <= m["win_rate"] <= m["win_rate_ci"][1]
        seed_dpo = json.loads((run_dir / "eval_seed_dpo" / "eval.json").read_text())["outcomes"]
        if m["iteration"] == 0:
            assert m["gain_over_seed_dpo"] is None
        else:
            gain = m["gain_over_seed_dpo"]
            by_hand = [100 * (evaluated["outcomes"][k] - seed_dpo[k]) for k in seed_dpo]
            assert gain["n"] == len(seed_dpo) and gain["difference"] == pytest.approx(sum(by_hand) / len(by_hand))
            assert gain["ci"][0] <= gain["difference"] <= gain["ci"][1]
    table = win_rate_table((run_dir / "report.md").read_text())
    assert set(table) == {m["model"] for m in results["models"]}
    assert len({m["win_rate"] for m in results["models"]} | {m["lc_win_rate"] for m in results["models"]}) > 2
    for m in results["models"]:
        g = m["gain_over_seed_dpo"]
        gain = "-" if g is None else f"{g['difference']:+.1f} [{g['ci'][0]:.1f}, {g['ci'][1]:.1f}]"
        interval = [round(v, 1) for v in m["win_rate_ci"]]
        assert table[m["model"]] == (round(m["win_rate"], 1), interval, gain, round(m["lc_win_rate"], 1))
    assert [it["iteration"] for it in results["iterations"]] == [1, 2]
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    markdown = (run_dir / "report.md").read_text()
    for it in results["iterations"]:
        i = it["iteration"]
        counts = json.loads((run_dir / f"iter{i}_pairs" / "counts.json").read_text())
        assert it["pairs"] == counts and 0 <= it["agreement_with_gold"] <= 100
        evaluated = json.loads((run_dir / f"iter{i}_eval" / "eval.json").read_text())
        assert (it["gold_ties"], it["agreement_decisive"]) == (evaluated["gold_ties"], evaluated["agreement_decisive"])
        ties, decisive = it["gold_ties"] / 100, it["agreement_decisive"]
        # Ties count half in the overall agreement: it is the mix of 50 on the ties and the decisive pairs' rate.
        assert it["agreement_with_gold"] == pytest.approx(ties * 50 + (1 - ties) * (decisive or 0.0))
        assert it["eos_rate"] == manifest[f"iter{i}_generate"]["summary"]["eos_rate"]
        assert it["truncated_share"] == pytest.approx(1 - it["eos_rate"])
        assert it["chosen_truncated_share"] == counts["chosen_truncated"] / counts["pairs"]
        assert it["rejected_truncated_share"] == counts["rejected_truncated"] / counts["pairs"]
        row = table_row(markdown, "### Truncation per iteration", str(i))
        shares = (it["truncated_share"], it["chosen_truncated_share"])
        assert row[1:4] == [f"{it['eos_rate']:.2f}", *(f"{100 * share:.1f}" for share in shares)]
    for m in results["models"]:
        eos_rates = table_row(markdown, "## Win rate", m["model"])[-2:]
        assert eos_rates == [f"{m['eos_rate']:.2f}", f"{m['baseline_eos_rate']:.2f}"]
    # Whatever the tiny run's numbers, the report says what it found, in report.md and in the stage's summary.
    warnings = [line for line in markdown.splitlines() if line.startswith("> **Warning:**")]
    assert manifest["report"]["summary"]["length_warnings"] == len(warnings)
    over = [it for it in results["iterations"] if it["truncated_share"] > TRUNCATED_SHARE_LIMIT]
    named = [w.removeprefix("> **Warning:** ").split(":")[0] for w in warnings[: len(over)]]
    assert named == [f"iteration {it['iteration']}" for it in over]


def test_collected_tables_follow_the_stage_files(tiny_run: tuple[Path, str]) -> None:
    run_dir, _ = tiny_run
    data = collect_run(run_dir)
    assert list(data.training) == ["sft", "seed_dpo", "iter1_train", "iter2_train"]
    rows = [json.loads(line) for line in (run_dir / "iter2_train" / "work" / "metrics.jsonl").read_text().splitlines()]
    assert data.training["iter2_train"] == rows and any(r["flagged_fraction"] > 0 for r in rows)
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert dict(data.stage_seconds) == {name: entry["seconds"] for name, entry in manifest.items()}
    assert data.generation[1]["mean_words"] == manifest["iter1_generate"]["summary"]["mean_words"]
    flagged = sum(r["flagged_fraction"] for r in rows) / len(rows)
    iteration_row = next(line for line in (run_dir / "report.md").read_text().splitlines() if line.startswith("| 2 | "))
    assert f"| {100 * flagged:.1f} |" in iteration_row


def test_cli_report_rebuilds_it_and_reports_an_unfinished_run(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    source, _ = tiny_run
    run_dir = tmp_path / "copy"
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("model", "shards", "plots", "report.md"))
    (run_dir / "iter2_eval" / ".complete").unlink()  # cut off: its numbers must not be reported
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert all((run_dir / "plots" / f"{name}.png").is_file() for name in PLOTS)
    markdown = (run_dir / "report.md").read_text()
    assert set(win_rate_table(markdown)) == {"seed_dpo", "iter1_train"}
    assert "not finished: iter2_eval" in markdown
    results = json.loads((run_dir / "results.json").read_text())
    assert [m["model"] for m in results["models"]] == ["seed_dpo", "iter1_train"]

    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def test_compare_puts_runs_side_by_side(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    first, _ = tiny_run
    second = tmp_path / "other"
    shutil.copytree(first, second, ignore=shutil.ignore_patterns("model", "shards", "plots"))
    recipe = yaml.safe_load((second / "recipe.yaml").read_text())
    recipe["run"]["name"] = "other"
    (second / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    eval_json = second / "iter2_eval" / "eval.json"
    changed = {**json.loads(eval_json.read_text()), "win_rate": 12.25, "lc_win_rate": 34.75}
    eval_json.write_text(json.dumps(changed))

    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["report", "--compare", str(first), str(second), "--out", str(out)])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    final = json.loads((first / "results.json").read_text())["models"][-1]
    summary = [line for line in markdown.splitlines() if line.startswith(("| r |", "| other |"))]
    assert len(summary) == 4  # each run in the summary table and in the per-iteration table
    assert f"| r | `{first}` | iter2_train | {final['win_rate']:.1f} | {final['lc_win_rate']:.1f} |" in markdown
    assert f"| other | `{second}` | iter2_train | 12.2 | 34.8 |" in markdown
    for name in ("win_rate", "agreement", "length", "flagged"):
        png_size(out / "plots" / f"{name}.png")
        assert f"(plots/{name}.png)" in markdown

    same = compare_runs([first, first], tmp_path / "same")  # one run twice: labels still tell them apart
    assert "#1" in same.markdown.read_text() and "#2" in same.markdown.read_text()


def test_no_progress_output_reads_as_plain_lines(tiny_run: tuple[Path, str]) -> None:
    _, output = tiny_run
    assert "\r" not in output and "\x1b" not in output
    progress = [line for line in output.splitlines() if re.match(r"  \S.*: \d+/\d+ \w+s \(\d+%\)", line)]
    described = {line.split(":")[0].strip() for line in progress}
    assert {"generate", "sft"} <= described and any(d.startswith("judge") for d in described), described
    assert any(d.startswith(("dpo", "iter", "seed")) for d in described), described


def test_report_without_plots_writes_the_tables(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "tables"
    shutil.copytree(tiny_run[0], run_dir, ignore=shutil.ignore_patterns("model", "shards", "plots", "report.md"))
    report = build_report(run_dir, plots=False)
    assert report.plots == {} and not (run_dir / "plots").exists()
    assert "![" not in report.markdown.read_text() and "| iter2_train | 2 |" in report.markdown.read_text()


def test_a_plot_without_data_is_removed_not_left_stale(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "unevaluated"
    shutil.copytree(tiny_run[0], run_dir, ignore=shutil.ignore_patterns("model", "shards"))
    for marker in run_dir.glob("*eval*/.complete"):
        marker.unlink()
    report = build_report(run_dir)
    assert set(report.plots) == {"noise", "rewards", "loss", "length", "stage_times"}
    assert sorted(p.stem for p in (run_dir / "plots").glob("*.png")) == sorted(report.plots)
    assert "No model has been evaluated" in report.markdown.read_text()
    assert json.loads((run_dir / "results.json").read_text())["models"] == []


# Length hacking: a run directory written by hand --------------------------------------------------------


def write_stage(run_dir: Path, manifest: dict, name: str, kind: str, iteration: int, summary: dict, **files) -> None:
    """One finished stage as the runner leaves it: its folder with ``files`` (name -> JSON) and marker, and
    its manifest entry."""
    folder = run_dir / name
    folder.mkdir(parents=True)
    for file, content in files.items():
        (folder / f"{file}.json").write_text(json.dumps(content))
    (folder / MARKER).write_text("")
    manifest[name] = {"kind": kind, "iteration": iteration, "status": "done", "seconds": 1.0, "summary": summary}


def eval_json(model: str, iteration: int, words: float, eos: float | None, agreement: float | None) -> dict:
    """An eval.json; ``eos`` None: one from before the EOS rates were kept."""
    metrics = {
        "model": model,
        "iteration": iteration,
        "evaluator": "gold",
        "win_rate": 80.0,
        "win_rate_se": 2.0,
        "lc_win_rate": 70.0,
        "n": 400,
        "mean_words_model": words,
        "mean_words_baseline": 16.0,
    }
    if eos is not None:
        metrics.update(eos_rate_model=eos, eos_rate_baseline=0.96)
    if agreement is not None:
        metrics["agreement_with_gold"] = agreement
    return metrics


def hand_made_run(run_dir: Path, *, new_counts: bool = True) -> Path:
    """Two iterations as the toy world has them: iteration 1's samples 10% truncated (under the limit),
    iteration 2's 33% (over it), its model at 29 words against the baseline's 16. ``new_counts`` False: a
    run from before the pairs' truncation counts and the evaluated EOS rates were kept."""
    manifest: dict = {}
    run_dir.mkdir(parents=True)
    # Too little of a recipe to load: the report takes the stages from manifest.json.
    recipe = {"run": {"name": run_dir.name}, "evaluation": {"baseline": "sft"}}
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    baseline = {"prompts": 200, "responses": 400, "eos_rate": 0.96, "mean_tokens": 17.0, "mean_words": 16.0}
    write_stage(run_dir, manifest, "eval_baseline", "eval_baseline", 0, baseline)
    eos = 0.95 if new_counts else None
    write_stage(run_dir, manifest, "eval_seed_dpo", "eval", 0, {}, eval=eval_json("seed_dpo", 0, 16.0, eos, None))
    for i, (eos_rate, chosen, rejected, words, model_eos) in enumerate(
        [(0.9, 12, 5, 19.5, 0.88), (0.67, 45, 20, 29.0, 0.6)], start=1
    ):
        samples = {"prompts": 500, "responses": 1000, "eos_rate": eos_rate, "mean_tokens": 30.0, "mean_words": 28.0}
        write_stage(run_dir, manifest, f"iter{i}_generate", "generate", i, samples)
        counts = {"rows": 500, "pairs": 100, "kept_tie": 0}
        if new_counts:
            counts.update(chosen_truncated=chosen, rejected_truncated=rejected)
        write_stage(run_dir, manifest, f"iter{i}_pairs", "pairs", i, counts, counts=counts)
        evaluated = eval_json(f"iter{i}_train", i, words, model_eos if new_counts else None, 79.0 - 20 * (i - 1))
        write_stage(run_dir, manifest, f"iter{i}_eval", "eval", i, {}, eval=evaluated)
    (run_dir / "manifest.json").write_text(json.dumps({"stages": manifest}))
    return run_dir


def table_row(markdown: str, heading: str, first_cell: str) -> list[str]:
    """The cells of the row starting with ``first_cell`` in the first table after ``heading``."""
    section = markdown.split(heading, 1)[1]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} after {heading!r}")


def test_report_warns_about_the_iteration_whose_samples_are_cut(tmp_path: Path) -> None:
    run_dir = hand_made_run(tmp_path / "hand")
    report = build_report(run_dir, plots=False)
    markdown = report.markdown.read_text()
    warnings = [line for line in markdown.splitlines() if line.startswith("> **Warning:**")]
    assert len(warnings) == 2 and warnings == [f"> **Warning:** {w}" for w in report.warnings]
    truncated, longer = warnings
    assert truncated.startswith("> **Warning:** iteration 2: 33% of its samples were cut at max_new_tokens")
    assert "(EOS rate 0.67; cut: its chosen responses 45%, sft (baseline) on the hold-out prompts 4%)" in truncated
    assert f"over the {100 * TRUNCATED_SHARE_LIMIT:.0f}% limit" in truncated and "drop_truncated" in truncated
    assert "Likely length hacking: the judge rewards length." in truncated
    assert "iteration 1" not in markdown.split("## Win rate")[0]  # 10% truncated: under the limit
    assert "iter2_train (iteration 2) answers in 29.0 words" in longer and "1.8 times the 16.0 of sft" in longer

    # The tables: models with their EOS rates, iterations with their truncated shares.
    assert table_row(markdown, "## Win rate", "iter2_train")[-2:] == ["0.60", "0.96"]
    assert table_row(markdown, "## Win rate", "seed_dpo")[-2:] == ["0.95", "0.96"]
    assert table_row(markdown, "### Truncation per iteration", "1") == ["1", "0.90", "10.0", "12.0", "5.0", "79.0"]
    assert table_row(markdown, "### Truncation per iteration", "2") == ["2", "0.67", "33.0", "45.0", "20.0", "59.0"]
    length = table_row(markdown, "## Response length", "sft (baseline)")
    assert length[:3] == ["sft (baseline)", "16.0", "0.96"]
    assert table_row(markdown, "## Response length", "1")[:3] == ["1", "19.5", "0.88"]  # model 1: evaluated
    assert table_row(markdown, "## Response length", "1")[-1] == "0.67"  # its samples for iteration 2

    results = json.loads((run_dir / "results.json").read_text())
    second = results["iterations"][1]
    assert second["eos_rate"] == 0.67 and second["truncated_share"] == pytest.approx(0.33)
    assert second["chosen_truncated_share"] == 0.45 and second["rejected_truncated_share"] == 0.2
    assert [m["eos_rate"] for m in results["models"]] == [0.95, 0.88, 0.6]


def test_an_older_run_without_the_truncation_counts_still_reports(tmp_path: Path) -> None:
    run_dir = hand_made_run(tmp_path / "old", new_counts=False)
    markdown = build_report(run_dir, plots=False).markdown.read_text()
    assert table_row(markdown, "## Win rate", "iter2_train")[-2:] == ["-", "-"]
    assert table_row(markdown, "### Truncation per iteration", "2") == ["2", "0.67", "33.0", "-", "-", "59.0"]
    # The samples' EOS rate was always kept: the warning still comes, without the chosen share.
    (truncated,) = [line for line in markdown.splitlines() if "of its samples were cut" in line]
    assert "iteration 2: 33%" in truncated and "chosen responses" not in truncated


def test_a_baseline_cut_as_often_points_at_max_new_tokens_not_the_judge(tmp_path: Path) -> None:
    run_dir = hand_made_run(tmp_path / "short")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"]["eval_baseline"]["summary"]["eos_rate"] = 0.7  # 30% of the SFT model's responses cut
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    truncated, longer = build_report(run_dir, plots=False).warnings
    assert truncated.startswith("iteration 2: 33% of its samples were cut") and "hold-out prompts 30%" in truncated
    assert "max_new_tokens is too small" in truncated and "length hacking" not in truncated
    assert "Likely length hacking" in longer  # the growth in words is the iterations' own


def test_cli_report_prints_the_warnings_and_draws_the_eos_rate(tmp_path: Path) -> None:
    run_dir = hand_made_run(tmp_path / "hand")
    under = hand_made_run(tmp_path / "fine")
    manifest = json.loads((under / "manifest.json").read_text())
    manifest["stages"]["iter2_generate"]["summary"]["eos_rate"] = 0.85  # 15% cut: under the limit
    (under / "manifest.json").write_text(json.dumps(manifest))
    (under / "iter2_eval" / "eval.json").write_text(json.dumps(eval_json("iter2_train", 2, 20.0, 0.85, 70.0)))

    result = CliRunner().invoke(app, ["report", str(run_dir), str(under)])
    assert result.exit_code == 0, result.output
    printed = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(printed) == 2 and printed[0].startswith("warning: iteration 2: 33% of its samples were cut")
    assert "warning:" not in (under / "report.md").read_text().lower()
    width, _ = png_size(run_dir / "plots" / "length.png")
    assert width > 1500  # three panels: words, EOS rate, WR − LC

    compared = compare_runs([run_dir, under], tmp_path / "cmp")
    text = compared.markdown.read_text()
    warned = [line for line in text.splitlines() if line.startswith("> **Warning**")]
    assert len(warned) == 2 and warned[0].startswith("> **Warning** (hand): iteration 2: 33%")
    assert all(line.startswith("> **Warning** (hand): ") for line in warned)
    assert table_row(text, "# Comparison", "hand")[6:8] == ["29.0", "33.0"]
    assert table_row(text, "# Comparison", "fine")[6:8] == ["20.0", "15.0"]
