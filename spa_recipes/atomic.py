"""Atomic artifacts: write under a temporary name, rename into place, then mark complete.

A folder counts as finished only when its completion marker (``.complete``) exists. Anything else
found on disk (a temporary folder, a folder without marker) is the remains of a cut-off process and
is redone, never trusted.

Every JSON written here is strict JSON (:func:`json_safe`): a NaN or infinity is written as ``null``, and the
nearest enclosing object gets a note ``"_nonfinite": {"<key>": "nan" | "inf" | "-inf"}`` (``"<key>.<i>"`` for an
element of a list under that key), which :func:`restore_nonfinite` reads back.

A write that fails for want of space or a writable disk (ENOSPC, EDQUOT, EROFS) raises :class:`WriteError`, a
user error naming the path and what was being written; the temporary file or folder is removed first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from spa_recipes.errors import UserError
from spa_recipes.faults import disk_full_point, fault_point

MARKER = ".complete"
NONFINITE_NOTE = "_nonfinite"
# errno -> what the user can do about it
_STORAGE_ERRORS = {
    errno.ENOSPC: "free space and run the same command again to resume",
    errno.EDQUOT: "free space (or raise the quota) and run the same command again to resume",
    errno.EROFS: "make the file system writable and run the same command again to resume",
}


class WriteError(UserError):
    """An artifact could not be written: the disk is full, over quota or read-only (exit code 2)."""


def _nonfinite_token(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that is strict JSON: non-finite floats become ``None``, noted in the enclosing object.

    Each object (dict) that holds a non-finite float directly, or in lists under one of its keys, gets
    ``"_nonfinite": {"loss": "nan", "margins.3": "-inf"}``. Nested objects carry their own note. A non-finite float
    with no enclosing object (a bare list) is written as ``null`` without a note.
    """
    return _safe(obj, "", None)


def _safe(obj: Any, path: str, notes: dict[str, str] | None) -> Any:
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if notes is not None:
            notes[path] = _nonfinite_token(obj)
        return None
    if isinstance(obj, dict):
        own: dict[str, str] = {}
        out = {k: _safe(v, str(k), own) for k, v in obj.items() if k != NONFINITE_NOTE}
        if own:
            out[NONFINITE_NOTE] = own
        return out
    if isinstance(obj, list | tuple):
        return [_safe(v, f"{path}.{i}", notes) for i, v in enumerate(obj)]
    return obj


def restore_nonfinite(obj: Any) -> Any:
    """Undo :func:`json_safe` on parsed JSON: put the noted NaN and infinities back and drop the notes."""
    if isinstance(obj, list):
        return [restore_nonfinite(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    notes = obj.get(NONFINITE_NOTE)
    out = {k: restore_nonfinite(v) for k, v in obj.items() if k != NONFINITE_NOTE}
    if isinstance(notes, dict):
        for path, token in notes.items():
            _put(out, str(path), float(token))
    return out


def _put(obj: dict[str, Any], path: str, value: float) -> None:
    key, indexes = path, []
    while key not in obj and re.search(r"\.\d+$", key):
        key, index = key.rsplit(".", 1)
        indexes.insert(0, int(index))
    if key not in obj:
        return
    if not indexes:
        obj[key] = value
        return
    target = obj[key]
    with contextlib.suppress(IndexError, TypeError):
        for index in indexes[:-1]:
            target = target[index]
        target[indexes[-1]] = value


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)``, refusing anything that is not strict JSON."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def loads_json(text: str) -> Any:
    """Parse JSON written by :func:`dumps_json`, with its non-finite values restored."""
    return restore_nonfinite(json.loads(text))


def describe(path: str | os.PathLike[str]) -> str:
    """What an artifact is, from its path (for error messages)."""
    p = Path(path)
    parts = p.parts
    name = p.name
    if "checkpoints" in parts:
        return "training checkpoint"
    if "shards" in parts:
        kinds = {"_generate": "generation shard", "_judge": "judging shard", "_eval": "evaluation shard"}
        return next((v for k, v in kinds.items() if any(part.endswith(k) for part in parts)), "shard")
    known = {
        "manifest.json": "run manifest",
        "results.json": "results",
        "metrics.jsonl": "metrics",
        "report.md": "report",
        MARKER: "completion marker",
    }
    if name in known:
        return known[name]
    if name == "model" or "model" in parts:
        return "model"
    suffix = p.suffix.lstrip(".")
    return f"{suffix} file" if suffix else "folder"


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.absolute().relative_to(Path.cwd()))
    return str(path)


def storage_error(exc: BaseException, path: str | os.PathLike[str], what: str | None = None) -> WriteError | None:
    """The :class:`WriteError` for an OSError that says the disk is full, over quota or read-only; else None."""
    if not isinstance(exc, OSError) or exc.errno not in _STORAGE_ERRORS:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    return WriteError(
        f"cannot write {_shown(Path(path))} ({what or describe(path)}): {reason}; {_STORAGE_ERRORS[exc.errno]}"
    )


def append_text(path: str | os.PathLike[str], text: str, what: str | None = None) -> None:
    """Append to a file; on a failed write, cut the file back to where it was (no half line is left)."""
    final = Path(path)
    try:
        with open(final, "a", encoding="utf-8") as f:
            start = f.tell()
            try:
                disk_full_point(final)
                f.write(text)
                f.flush()
            except BaseException:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise
    except OSError as exc:
        error = storage_error(exc, final, what)
        if error is None:
            raise
        raise error from exc


def is_complete(path: str | os.PathLike[str]) -> bool:
    """Whether a folder artifact was finished (its marker exists)."""
    return (Path(path) / MARKER).exists()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], what: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success rename it to ``path`` and write the marker.

    An existing ``path`` is replaced. On an exception the temporary folder is removed and ``path``
    is left as it was (after the rename, a failed marker write leaves ``path`` unmarked: redone, not trusted).
    A full, over-quota or read-only disk raises :class:`WriteError` naming ``path`` and ``what``.
    """
    final = Path(path)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            disk_full_point(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        (final / MARKER).write_text("")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = storage_error(exc, final, what)
        if error is None:
            raise
        raise error from exc
    _fsync_dir(final.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, what: str | None = None) -> None:
    """Write a file under a temporary name, fsync it, and rename it into place (then :func:`fault_point`).

    Raises:
        WriteError: the disk is full, over quota or read-only (the temporary file is removed).
    """
    final = Path(path)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            disk_full_point(final)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        error = storage_error(exc, final, what)
        if error is None:
            raise
        raise error from exc
    fault_point(final)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, what: str | None = None) -> None:
    """Write strict JSON (see :func:`json_safe`) atomically."""
    write_text_atomic(path, dumps_json(obj, indent=2, sort_keys=True) + "\n", what)


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], what: str | None = None) -> None:
    """Write one strict JSON object per line (see :func:`json_safe`) atomically."""
    write_text_atomic(path, "".join(dumps_json(row, sort_keys=True) + "\n" for row in rows), what)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a JSONL file, with the non-finite values noted by :func:`json_safe` restored."""
    with open(path, encoding="utf-8") as f:
        return [loads_json(line) for line in f if line.strip()]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
