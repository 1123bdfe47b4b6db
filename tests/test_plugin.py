"""The example plugin plugins/spa-length-guard, installed into this environment, and broken plugins.

The plugin is installed editable into the running interpreter's environment (``--no-deps
--no-build-isolation``: no network, ~3 s); it may be installed already, and stays installed afterwards.
Broken plugins are never installed: a ``*.dist-info`` folder on PYTHONPATH is enough for
``importlib.metadata`` to find their entry points in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spa_recipes.registry import ENTRY_POINT_GROUP

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugins" / "spa-length-guard"
TINY = REPO / "recipes" / "tiny_spa.yaml"
SOURCE = "plugin spa-length-guard (entry point 'length_guard' = spa_length_guard:register)"


@pytest.fixture(scope="session")
def installed_plugin() -> Path:
    """pip install -e the example plugin into this environment; make it importable in this process too."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-e",
            str(PLUGIN),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"installing {PLUGIN} failed (needs setuptools in the venv):\n{result.stderr}"
    # The editable install's .pth file is read by new interpreters only; this one gets the folder itself.
    if str(PLUGIN) not in sys.path:
        sys.path.append(str(PLUGIN))
    return PLUGIN


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        cwd=cwd,
        timeout=60,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# The installed example plugin -----------------------------------------------------------------------


def test_ls_lists_the_plugin_with_its_source(installed_plugin: Path) -> None:
    result = cli("ls")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("length_guard ")]
    assert len(lines) == 1, result.stdout
    assert lines[0].endswith(f"[{SOURCE}]")
    section = result.stdout.split("pair_selector:")[1].split("noise_detector:")[0]
    assert "length_guard" in section


def test_recipe_through_the_plugin_validates(installed_plugin: Path, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "guarded.yaml",
        """\
        extends: tiny_spa.yaml
        pair_selector: {name: length_guard, max_length_ratio: 1.2}
    """,
    )
    assert cli("validate", str(recipe)).returncode == 0
    shown = cli("show", str(recipe))
    assert shown.returncode == 0, shown.stderr
    assert "  name: length_guard\n  max_length_ratio: 1.2\n  symmetric: false\n" in shown.stdout
    # Switching to it on the command line works too (min_max's arguments are dropped, its own defaults apply).
    assert cli("validate", str(TINY), "pair_selector.name=length_guard").returncode == 0


def test_a_typo_in_the_plugin_argument_is_refused(installed_plugin: Path, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "typo.yaml",
        """\
        extends: tiny_spa.yaml
        pair_selector: {name: length_guard, max_lenght_ratio: 1.2}
    """,
    )
    result = cli("validate", str(recipe))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "pair_selector.max_lenght_ratio: unknown key (did you mean 'max_length_ratio'?)" in result.stderr
    result = cli("validate", str(TINY), "pair_selector={name: length_guard, max_length_ratio: 0}")
    assert result.returncode == 2
    assert "pair_selector.max_length_ratio: Input should be greater than 0" in result.stderr


def test_plugin_imports_no_torch(installed_plugin: Path) -> None:
    code = (
        "import sys, spa_length_guard, spa_length_guard.selector; "
        "from spa_recipes.registry import get_registry; get_registry(); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_plugins_own_tests_pass(installed_plugin: Path) -> None:
    """The plugin carries its tests in its package (plugins/spa-length-guard/tests); they run from its folder."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        cwd=PLUGIN,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout[-3000:]


# Broken plugins -------------------------------------------------------------------------------------


def make_distribution(folder: Path, dist: str, module: str, source: str, entry_point: str) -> None:
    """A minimal installed distribution in ``folder``: a ``*.dist-info`` with METADATA and entry_points.txt."""
    info = folder / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point} = {module}:register\n")
    (folder / f"{module}.py").write_text(textwrap.dedent(source))


def with_pythonpath(folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def test_plugin_that_fails_to_import_stops_validation(tmp_path: Path) -> None:
    make_distribution(
        tmp_path,
        "spa-broken-plugin",
        "spa_broken_plugin",
        """\
        raise ImportError("spa_broken_plugin needs the package frobnicate")
    """,
        entry_point="broken",
    )
    env = with_pythonpath(tmp_path)
    for args in [("validate", str(TINY)), ("ls",)]:
        result = cli(*args, env=env)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert (
            "plugin spa-broken-plugin (entry point 'broken' = spa_broken_plugin:register) failed to import: "
            "ImportError: spa_broken_plugin needs the package frobnicate"
        ) in result.stderr
    debug = cli("--debug", "validate", str(TINY), env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_plugin_that_registers_an_existing_name(tmp_path: Path) -> None:
    make_distribution(
        tmp_path,
        "spa-dup-plugin",
        "spa_dup_plugin",
        """\
        from spa_recipes.pairs_config import PairSelectorConfig

        def register(registry):
            registry.register("pair_selector", "min_max", config=PairSelectorConfig, builder="spa_dup_plugin:X")
    """,
        entry_point="dup",
    )
    result = cli("validate", str(TINY), env=with_pythonpath(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        "plugin spa-dup-plugin (entry point 'dup' = spa_dup_plugin:register): pair_selector 'min_max' is already "
        "registered by built-in"
    ) in result.stderr


def test_a_run_through_the_plugin(installed_plugin: Path, tmp_path: Path) -> None:
    """The plugin's pair selector in a real (shrunk) tiny run: its counts reach the pairs stage."""
    from test_runner import SHRUNK

    overrides = [o for o in SHRUNK if not o.startswith(("iterations", "noise_detector"))]
    overrides += [
        "iterations=1",
        "noise_detector.lambda=0.5",
        "pair_selector.name=length_guard",
        "pair_selector.max_length_ratio=1.2",
        f"run.output_dir={tmp_path}",
        "run.name=p",
    ]
    result = cli("run", str(REPO / "recipes" / "tiny_spa.yaml"), *overrides, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads((tmp_path / "p" / "iter1_pairs" / "counts.json").read_text())
    pairs = (tmp_path / "p" / "iter1_pairs" / "pairs.jsonl").read_text().splitlines()
    assert "dropped_length" in counts and counts["pairs"] == len(pairs) > 0
    for line in pairs:
        pair = json.loads(line)
        assert len(pair["chosen"].split()) <= 1.2 * max(len(pair["rejected"].split()), 1) or not pair["rejected"]
