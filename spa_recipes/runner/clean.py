"""Disk: a finished stage's resume state, and what ``spa-recipe clean`` frees in a run directory.

A stage kind declares its scratch outputs (:attr:`spa_recipes.runner.stage.StageKind.scratch`: training
checkpoints, generation and judging shards): only the stage itself reads them, to resume. The runner removes
them when the stage has finished, unless ``run.keep_checkpoints``. ``spa-recipe clean RUN`` removes what is
left of them in finished stages and the folders of stages the run's recipe no longer has (a run re-run with
fewer iterations), and keeps everything the report and later stages read: models, responses, scores, pairs,
evaluations, metrics, and the resume state of stages that have not finished.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from spa_recipes.atomic import is_complete
from spa_recipes.errors import UserError
from spa_recipes.runner.checksums import output_paths
from spa_recipes.runner.stage import StageKind


@dataclass(frozen=True)
class Freeable:
    """A path ``clean`` removes: its size in bytes and why it is not needed."""

    path: Path
    size: int
    why: str


def scratch_paths(stage_dir: Path, kind: StageKind) -> list[Path]:
    """A stage's scratch outputs that exist."""
    return [path for name in kind.scratch for path in output_paths(stage_dir, kind, name)]


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def freeable(run_dir: Path, stages: dict[str, tuple[StageKind, bool]]) -> list[Freeable]:
    """What ``clean`` would remove from a run directory.

    Args:
        run_dir: the run directory.
        stages: per stage of the run's graph, its kind and whether it has finished (with the current fingerprint).
    """
    out = []
    for name, (kind, finished) in stages.items():
        if finished and is_complete(run_dir / name):
            why = f"resume state of finished stage {name}"
            out += [Freeable(p, size_of(p), why) for p in scratch_paths(run_dir / name, kind)]
    for folder in sorted(run_dir.iterdir()):
        if folder.is_dir() and folder.name not in stages and (folder / ".fingerprint").is_file():
            out.append(Freeable(folder, size_of(folder), "a stage the run's recipe no longer has"))
    return out


def human(size: int) -> str:
    """``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def clean_run(run_dir: Path, *, dry_run: bool = False, force: bool = False) -> list[Freeable]:
    """``spa-recipe clean``: remove what the report and later stages do not need (:mod:`spa_recipes.runner.clean`).

    Raises:
        UserError: not a run directory; RunDirLocked: a run holds it (unless ``dry_run``).
    """
    from spa_recipes.recipe import load_recipe
    from spa_recipes.runner.graph import build_graph
    from spa_recipes.runner.lock import acquire
    from spa_recipes.runner.run import stage_status

    if not (run_dir / "recipe.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no recipe.yaml)")
    recipe = load_recipe(run_dir / "recipe.yaml")
    done = {row["stage"] for row in stage_status(run_dir, recipe) if row["status"] == "done"}
    stages = {s.name: (s.kind, s.name in done) for s in build_graph(recipe)}
    lock = None if dry_run else acquire(run_dir, force=force)
    try:
        found = freeable(run_dir, stages)
        for item in [] if dry_run else found:
            remove(item.path)
        return found
    finally:
        if lock is not None:
            lock.release()
