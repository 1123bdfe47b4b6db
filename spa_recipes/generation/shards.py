"""Sharded, resumable outputs: the work of a stage cut into fixed shards, each written atomically.

Items are cut, in their given order, into shards of ``shard_size``; shard ``i`` is written to
``<out_dir>/shard-0000i.jsonl`` by an atomic rename, so a shard file that exists is complete. A run
that was cut off skips the shards already on disk and computes the rest. Each shard must be a pure
function of its index and items (e.g. seeded from ``(seed, shard_index)``) so that a resumed run
writes what an uninterrupted run would have written. A stop request (SIGTERM, Ctrl-C: :mod:`spa_recipes.interrupt`)
ends the loop after the shard in progress.

In a multi-process run (:mod:`spa_recipes.distributed`) the shards still to do are dealt out round-robin
over the processes; each writes its own shard files, all wait at a barrier, then every process reads all
shards in order. So every item is computed once and returned to every process exactly once, whatever the
process count, and the folder resumes the same way (also with another process count).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from spa_recipes.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from spa_recipes.distributed import barrier, broadcast, is_main_process, rank, world_size
from spa_recipes.interrupt import raise_if_stop_requested
from spa_recipes.progress import progress_bar

T = TypeVar("T")
Row = dict[str, Any]
SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.jsonl$")
LAYOUT_FILE = "shards.json"


def shard_path(out_dir: str | Path, shard_index: int) -> Path:
    """The file of shard ``shard_index`` in ``out_dir``."""
    return Path(out_dir) / f"shard-{shard_index:05d}.jsonl"


def run_sharded(
    items: Sequence[T],
    shard_size: int,
    out_dir: str | Path,
    fn: Callable[[int, list[T]], list[Row]],
    desc: str = "",
) -> list[Row]:
    """Compute ``fn`` shard by shard, skipping shards already on disk, and return all rows in order.

    Args:
        items: the work, in a fixed order (the same order on every restart).
        shard_size: items per shard; must stay the same across restarts of one output folder.
        out_dir: folder of the shard files (created if missing).
        fn: maps ``(shard_index, shard_items)`` to the rows of that shard.
        desc: label of the progress bar.

    Returns:
        The rows of every shard, in shard order.

    Raises:
        ValueError: if ``shard_size`` is not positive, or ``out_dir`` holds shards of another layout
            (a different ``shard_size`` or number of items).
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out = Path(out_dir)
    starts = range(0, len(items), shard_size)
    world = world_size()
    if world > 1:
        return _run_sharded_distributed(items, shard_size, out, fn, desc, starts, world)
    _check_layout(out, shard_size, len(items))
    done = {i for i in range(len(starts)) if shard_path(out, i).exists()}
    already = sum(min(shard_size, len(items) - i * shard_size) for i in done)
    rows: list[Row] = []
    with progress_bar(len(items), desc or out.name, initial=already) as bar:
        for index, start in enumerate(starts):
            path = shard_path(out, index)
            if index in done:
                rows.extend(read_jsonl(path))
                continue
            chunk = list(items[start : start + shard_size])
            write_jsonl_atomic(path, fn(index, chunk))  # the fault point of the resume tests is in there
            # Read back, so a fresh run returns exactly what a resumed one would (JSON types, key order).
            rows.extend(read_jsonl(path))
            bar.update(len(chunk))
            if index < len(starts) - 1:  # SIGTERM or Ctrl-C: stop here; the shards on disk resume
                raise_if_stop_requested(f"after shard {index + 1} of {len(starts)}")
    return rows


def _run_sharded_distributed(
    items: Sequence[T],
    shard_size: int,
    out: Path,
    fn: Callable[[int, list[T]], list[Row]],
    desc: str,
    starts: range,
    world: int,
) -> list[Row]:
    """:func:`run_sharded` over several processes: deal out the missing shards, barrier, read all."""
    # Main alone checks the layout and lists the finished shards; everyone acts on main's list, since a
    # rank looking for itself could already see a shard another rank has just written.
    todo: list[int] | str = []
    if is_main_process():
        try:
            _check_layout(out, shard_size, len(items))
            todo = [i for i in range(len(starts)) if not shard_path(out, i).exists()]
        except ValueError as e:
            todo = str(e)
    todo = broadcast(todo)
    if isinstance(todo, str):
        raise ValueError(todo)  # on every rank, so none is left waiting at the barrier below
    mine = todo[rank() :: world]
    sizes = [min(shard_size, len(items) - i * shard_size) for i in range(len(starts))]
    # Main's bar shows main's own share of the missing work (the others work in step with it).
    label = f"{desc or out.name} (1/{world} of the work)"
    with progress_bar(sum(sizes[i] for i in mine), label, enabled=is_main_process()) as bar:
        for index in mine:
            path = shard_path(out, index)
            start = starts[index]
            write_jsonl_atomic(path, fn(index, list(items[start : start + shard_size])))  # (and its fault point)
            bar.update(sizes[index])
            if index != mine[-1]:  # no collective: each process stops at its own shard (the launcher ends the rest)
                raise_if_stop_requested(f"after shard {index + 1} of {len(starts)}")
    barrier()  # every shard is on disk before anyone reads
    missing = [i for i in range(len(starts)) if not shard_path(out, i).exists()]
    if missing:
        raise RuntimeError(f"{out}: shards {missing} are missing after every process finished its part")
    rows: list[Row] = []
    for index in range(len(starts)):
        rows.extend(read_jsonl(shard_path(out, index)))
    return rows


def _check_layout(out: Path, shard_size: int, num_items: int) -> None:
    """Record the layout on first use; refuse to resume shards cut differently (they would not line up)."""
    layout = {"shard_size": shard_size, "num_items": num_items}
    meta = out / LAYOUT_FILE
    if meta.exists():
        found = json.loads(meta.read_text())
        if found != layout:
            raise ValueError(f"{out}: shards were written with {found}, now asked for {layout}; remove the folder")
    else:
        write_json_atomic(meta, layout)


def read_shards(out_dir: str | Path) -> list[Row]:
    """All rows of the shard files in ``out_dir``, in shard order (temporary files are ignored).

    Raises:
        ValueError: if the shard indices have a gap (an unfinished run).
    """
    found = sorted((int(m.group(1)), p) for p in Path(out_dir).iterdir() if (m := SHARD_PATTERN.match(p.name)))
    indices = [i for i, _ in found]
    if indices != list(range(len(indices))):
        raise ValueError(f"{out_dir}: shard files are not contiguous from 0 (found {indices}); the run is unfinished")
    rows: list[Row] = []
    for _, path in found:
        rows.extend(read_jsonl(path))
    return rows
