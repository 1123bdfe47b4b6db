"""Every malformed recipe in tests/malformed/ is refused by the real CLI: exit 2, no traceback, the culprit named.

Each corpus file starts with one or more ``# expect: <substring>`` lines (every one must appear in stderr)
and may have a ``# overrides: a=b "c=d e"`` line (shell-quoted) passed after the recipe. Files under
tests/malformed/parts/ are helpers (the other half of an extends cycle), not corpus entries.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(CORPUS.glob("*.yaml"))
REPO = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_malformed_recipe_is_refused(path: Path) -> None:
    expects, overrides = _header(path)
    # Another working folder: errors must not depend on where the command runs.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SPA_RECIPES_ALLOW_IMPORT", None)
    result = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "validate", str(path), *overrides],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for expected in expects:
        assert expected in result.stderr, f"{path.name}: {expected!r} not in:\n{result.stderr}"
