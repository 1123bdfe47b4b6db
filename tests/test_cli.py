"""The `spa-recipe` command line, run as a real subprocess: help, exit codes, ls, cp, show, --allow-import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
import yaml

from spa_recipes.cli import app
from spa_recipes.recipe import ALLOW_IMPORT_ENV
from spa_recipes.registry import KINDS, Registry

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny_spa.yaml"


def cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if env is None:  # the caller's allow-list must not leak into the tests that expect a refusal
        env = {k: v for k, v in os.environ.items() if k != ALLOW_IMPORT_ENV}
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


# Every command the app has (the lead's later ones included), plus the root.
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_foundation_commands_exist() -> None:
    assert {"validate", "show", "ls", "cp"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=lambda c: c[0] if c else "root")
def test_help_everywhere_and_fast(command: list[str]) -> None:
    """Help works everywhere and imports none of the heavy libraries (what would make it take seconds)."""
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    if not command:
        for name in ["validate", "show", "ls", "cp", "--debug"]:
            assert name in result.stdout
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['spa-recipe', *{command!r}, '--help']\n"
        "try:\n    runpy.run_module('spa_recipes', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.strip().splitlines()[-1] == "[]"


def test_validate_ok() -> None:
    result = cli("validate", str(TINY))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok: {TINY} (run 'tiny_spa', 3 iterations)"
    assert result.stderr == ""


def test_user_error_exit_2_and_debug_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = cli("validate", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: recipe: file not found: {missing}"
    debug = cli("--debug", "validate", str(missing))
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "RecipeError" in debug.stderr
    # A folder instead of a file, and an unknown command, are user errors too.
    assert cli("validate", str(tmp_path)).returncode == 2
    assert cli("frobnicate").returncode == 2


def test_internal_error_exit_1(tmp_path: Path) -> None:
    # A component whose config model fails with something other than a validation error: a bug, not the user's.
    (tmp_path / "spa_test_buggy.py").write_text(
        textwrap.dedent("""\
        from pydantic import BaseModel, model_validator

        class Buggy:
            class Config(BaseModel):
                @model_validator(mode="after")
                def _crash(self):
                    raise RuntimeError("bug in the component")
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    args = ["validate", str(TINY), "pair_selector.name=spa_test_buggy:Buggy", "--allow-import", "spa_test_buggy"]
    result = cli(*args, env=env)
    assert result.returncode == 1
    assert "internal error: RuntimeError: bug in the component (run with --debug" in result.stderr
    assert "Traceback" not in result.stderr
    debug = cli("--debug", *args, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_allow_import_flag_and_env(tmp_path: Path) -> None:
    (tmp_path / "spa_test_cli_selector.py").write_text(
        textwrap.dedent("""\
        from pydantic import BaseModel, ConfigDict

        class Shortest:
            class Config(BaseModel):
                model_config = ConfigDict(extra="forbid")
                margin: float = 0.5
    """)
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: tiny_spa.yaml\npair_selector: {name: 'spa_test_cli_selector:Shortest', margin: 1}\n")
    env = {k: v for k, v in os.environ.items() if k != ALLOW_IMPORT_ENV} | {"PYTHONPATH": str(tmp_path)}
    refused = cli("validate", str(recipe), env=env)
    assert refused.returncode == 2
    assert "--allow-import spa_test_cli_selector" in refused.stderr
    assert cli("validate", str(recipe), "--allow-import", "spa_test_cli_selector", env=env).returncode == 0
    assert cli("validate", str(recipe), env={**env, ALLOW_IMPORT_ENV: "spa_test_cli_selector"}).returncode == 0
    shown = cli("show", str(recipe), "--allow-import", "spa_test_cli_selector", env=env)
    assert yaml.safe_load(shown.stdout)["pair_selector"] == {"name": "spa_test_cli_selector:Shortest", "margin": 1.0}


def test_ls_lists_recipes_and_every_builtin() -> None:
    result = cli("ls")
    assert result.returncode == 0, result.stderr
    assert "  tiny_spa.yaml" in result.stdout and "  base/spa_paper.yaml" in result.stdout
    registry = Registry()
    registry.load_builtins()
    for kind in KINDS:
        assert f"\n{kind}:\n" in result.stdout
        for comp in registry.components(kind):
            assert any(
                line.split()[0] == comp.name and line.endswith("[built-in]")
                for line in result.stdout.split(f"\n{kind}:\n")[1].splitlines()
                if line.startswith("  ")
            ), (kind, comp.name)


def test_cp_then_validate_from_elsewhere(tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    result = cli("cp", "tiny_spa", str(dest))
    assert result.returncode == 0, result.stderr
    copied = dest / "tiny_spa.yaml"
    assert copied.read_text() == TINY.read_text()
    # From another working folder: `extends: base/spa_paper.yaml` is found among the shipped recipes.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("validate", "../mine/tiny_spa.yaml", "run.name=copied", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "run 'copied'" in result.stdout
    # An existing destination is not overwritten; an unknown name lists what is shipped.
    again = cli("cp", "tiny_spa", str(copied))
    assert again.returncode == 2 and "already exists" in again.stderr
    unknown = cli("cp", "tiny_sap", str(tmp_path / "x.yaml"))
    assert unknown.returncode == 2
    assert "no shipped recipe 'tiny_sap' (did you mean 'tiny_spa'?)" in unknown.stderr
    assert "base/spa_paper.yaml" in unknown.stderr and "tiny_spa.yaml" in unknown.stderr
    assert cli("cp", "base/spa_paper.yaml", str(tmp_path / "new" / "paper.yaml")).returncode == 0
    assert (tmp_path / "new" / "paper.yaml").is_file()


def test_show_output_is_a_recipe(tmp_path: Path) -> None:
    result = cli("show", str(TINY), "judge.name=gold", "iterations=2", "noise_detector.lambda=[0.5, 0.25]")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["judge"] == {"name": "gold"}
    assert shown["iterations"] == 2
    path = tmp_path / "shown.yaml"
    path.write_text(result.stdout)
    again = cli("show", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout
