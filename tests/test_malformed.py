"""Every malformed recipe in tests/malformed/ is refused by the CLI: exit 2, no traceback, the culprit named.

Each corpus file starts with one or more ``# expect: <substring>`` lines (every one must appear in stderr)
and may have a ``# overrides: a=b "c=d e"`` line (shell-quoted) passed after the recipe. Files under
tests/malformed/parts/ are helpers (the other half of an extends cycle), not corpus entries.

The corpus runs through the CLI in this process (typer's ``CliRunner``: the same command, exit code and
stderr, without a Python start per file); a few files also run through the real ``python -m spa_recipes``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spa_recipes.cli import app

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(CORPUS.glob("*.yaml"))
REPO = Path(__file__).resolve().parent.parent
# Through a real interpreter as well: the first file, and the one whose verdict depends on the environment.
SUBPROCESS_FILES = [FILES[0], CORPUS / "import_not_allowed.yaml"]


def _header(path: Path) -> tuple[list[str], list[str]]:
    """The ``# expect:`` substrings and ``# overrides:`` of a corpus file (leading comment lines only)."""
    expects: list[str] = []
    overrides: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        tag, _, value = line[1:].strip().partition(":")
        if tag == "expect":
            expects.append(value.strip())
        elif tag == "overrides":
            overrides += shlex.split(value)
    return expects, overrides


def test_corpus_is_large_and_well_formed() -> None:
    assert len(FILES) >= 30
    for path in FILES:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"


def _assert_refused(path: Path, code: int | None, stdout: str, stderr: str) -> None:
    """Exit 2, nothing on stdout, only ``error:`` lines on stderr, each expected substring among them."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), stderr
    for expected in _header(path)[0]:
        assert expected in stderr, f"{path.name}: {expected!r} not in:\n{stderr}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_malformed_recipe_is_refused(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another working folder: errors must not depend on where the command runs.
    monkeypatch.chdir(path.parent)
    monkeypatch.delenv("SPA_RECIPES_ALLOW_IMPORT", raising=False)
    result = CliRunner().invoke(app, ["validate", str(path), *_header(path)[1]])
    _assert_refused(path, result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize("path", SUBPROCESS_FILES, ids=[p.stem for p in SUBPROCESS_FILES])
def test_malformed_recipe_is_refused_by_the_real_command(path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SPA_RECIPES_ALLOW_IMPORT", None)
    result = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "validate", str(path), *_header(path)[1]],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env=env,
        timeout=60,
    )
    _assert_refused(path, result.returncode, result.stdout, result.stderr)
