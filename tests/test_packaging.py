"""The built wheel carries the shipped recipes: `ls`, `cp` and `extends:` work without a source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_install_lists_copies_and_extends_shipped_recipes(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("spa_recipes-*.whl")
    shipped = sorted(str(p.relative_to(ROOT / "recipes")) for p in (ROOT / "recipes").rglob("*.yaml"))
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.removeprefix("spa_recipes/recipes/") for n in names if n.endswith(".yaml")) == shipped
    # A pure-Python wheel unpacked onto the path is that wheel installed; run from a folder with no recipes.
    site, work = tmp_path / "site", tmp_path / "work"
    zipfile.ZipFile(wheel).extractall(site)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def spa(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spa_recipes", *args], capture_output=True, text=True, cwd=work, env=env, timeout=60
        )

    listed = spa("ls")
    assert listed.returncode == 0 and str(site / "spa_recipes" / "recipes") in listed.stdout, listed.stdout
    assert "base/spa_paper.yaml" in listed.stdout
    assert spa("cp", "zephyr_spa.yaml", "mine.yaml").returncode == 0
    validated = spa("validate", "mine.yaml")  # extends: base/spa_paper.yaml, found in the wheel
    assert validated.returncode == 0, validated.stderr
    assert "ok: mine.yaml (run 'zephyr_spa', 3 iterations)" in validated.stdout
