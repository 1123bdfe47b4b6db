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

from spa_recipes.cli import app
from spa_recipes.reporting import build_report, collect_run, compare_runs

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


def win_rate_table(markdown: str) -> dict[str, tuple[float, float, float]]:
    """model -> (win rate, its s.e., LC win rate) from report.md's win-rate table (1 decimal)."""
    rows = {}
    for line in markdown.splitlines():
        match = re.match(r"\| (\S+) \| \d+ \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) \|", line)
        if match:
            rows[match.group(1)] = (float(match.group(2)), float(match.group(3)), float(match.group(4)))
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
            "lc_win_rate",
            "n",
            "mean_words",
            "baseline_mean_words",
        }
        stage = "eval_seed_dpo" if m["iteration"] == 0 else f"iter{m['iteration']}_eval"
        evaluated = json.loads((run_dir / stage / "eval.json").read_text())
        assert m["win_rate"] == evaluated["win_rate"] and m["mean_words"] == evaluated["mean_words_model"]
    table = win_rate_table((run_dir / "report.md").read_text())
    assert set(table) == {m["model"] for m in results["models"]}
    assert len({m["win_rate"] for m in results["models"]} | {m["lc_win_rate"] for m in results["models"]}) > 2
    for m in results["models"]:
        assert table[m["model"]] == (round(m["win_rate"], 1), round(m["win_rate_se"], 1), round(m["lc_win_rate"], 1))
    assert [it["iteration"] for it in results["iterations"]] == [1, 2]
    for it in results["iterations"]:
        counts = json.loads((run_dir / f"iter{it['iteration']}_pairs" / "counts.json").read_text())
        assert it["pairs"] == counts and 0 <= it["agreement_with_gold"] <= 100


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
