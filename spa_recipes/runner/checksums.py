"""Checksums of a finished stage's outputs: recorded in the manifest, checked before the stage is reused.

Every declared output of a stage kind (:class:`spa_recipes.runner.stage.StageKind`) except its scratch
(shards and training checkpoints, which only the stage itself reads to resume) is summarised as one
digest per file. A file up to ``FULL_HASH_LIMIT`` bytes is hashed whole (SHA-256); a larger one (model
weights) by its size, modification time and its first and last MiB, so that checking a 7B model's 15 GB
costs milliseconds while truncation, replacement or loss is still seen.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from spa_recipes.atomic import MARKER
from spa_recipes.runner.stage import StageKind

FULL_HASH_LIMIT = 64 * 2**20
_EDGE = 2**20


def file_digest(path: Path) -> str:
    """SHA-256 of the file, or of (size, mtime, first and last MiB) for a file over ``FULL_HASH_LIMIT``."""
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if stat.st_size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            return digest.hexdigest()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
        digest.update(f.read(_EDGE))
        f.seek(-_EDGE, 2)
        digest.update(f.read(_EDGE))
    return "large:" + digest.hexdigest()


def output_files(stage_dir: Path, kind: StageKind) -> list[Path]:
    """The files of a stage's kept outputs, sorted (a per-iteration output: every index)."""
    files: list[Path] = []
    for name in kind.outputs:
        if name not in kind.scratch:
            for path in output_paths(stage_dir, kind, name):
                files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    scratch = [p for name in kind.scratch for p in output_paths(stage_dir, kind, name)]
    return sorted(p for p in files if p.name != MARKER and not any(p.is_relative_to(s) for s in scratch))


def output_paths(stage_dir: Path, kind: StageKind, name: str) -> list[Path]:
    """The paths of one declared output that exist (a per-iteration output: every index)."""
    return sorted(stage_dir.glob(kind.outputs[name].replace("{index}", "*")))


def checksum_outputs(stage_dir: Path, kind: StageKind) -> dict[str, str]:
    """``{relative path: digest}`` of a stage's kept outputs."""
    return {str(p.relative_to(stage_dir)): file_digest(p) for p in output_files(stage_dir, kind)}


def damage(stage_dir: Path, kind: StageKind, recorded: dict[str, str]) -> str | None:
    """What is wrong with a finished stage's outputs compared with its recorded checksums; None if nothing.

    Returns:
        A short description naming the first damaged files (missing, changed or truncated, unexpected).
    """
    found = checksum_outputs(stage_dir, kind)
    missing = sorted(set(recorded) - set(found))
    changed = sorted(p for p in set(recorded) & set(found) if recorded[p] != found[p])
    problems = [f"{p} is missing" for p in missing] + [f"{p} has changed" for p in changed]
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return ", ".join(problems[:3]) + more
