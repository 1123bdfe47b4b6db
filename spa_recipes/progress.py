"""Progress on long work: tqdm bars on a terminal, plain log lines elsewhere (CI, log files).

The runner sets the mode once (``--progress`` / ``--no-progress``, default: bars when stderr is a
terminal); every long loop asks :func:`progress_bar` for its bar and calls ``update(n)``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_mode: dict[str, bool | None] = {"bars": None}


def set_progress(bars: bool | None) -> None:
    """``True``: tqdm bars; ``False``: a log line every 10%; ``None``: bars when stderr is a terminal."""
    _mode["bars"] = bars


def progress_bar(total: int, desc: str, *, initial: int = 0, unit: str = "item", enabled: bool = True) -> Any:
    """A context-manager bar with ``update(n)``; silent when ``enabled`` is false (e.g. not the main process)."""
    bars = _mode["bars"] if _mode["bars"] is not None else sys.stderr.isatty()
    if enabled and bars:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return _LineProgress(total, desc, initial, unit, enabled)


class _LineProgress:
    """Prints ``desc: n/total (p%), rate, ETA`` to stderr at every 10% step and at the end."""

    def __init__(self, total: int, desc: str, initial: int, unit: str, enabled: bool) -> None:
        self.total, self.desc, self.n, self.unit, self.enabled = total, desc, initial, unit, enabled
        self.start, self.start_n = time.monotonic(), initial
        self.next_report = self._next(initial)

    def _next(self, n: int) -> int:
        step = max(self.total // 10, 1)
        return (n // step + 1) * step

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and (self.n >= self.next_report or self.n >= self.total):
            self.next_report = self._next(self.n)
            elapsed = max(time.monotonic() - self.start, 1e-9)
            rate = (self.n - self.start_n) / elapsed
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            pct = 100 * self.n / max(self.total, 1)
            print(
                f"  {self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%), {rate:.1f} {self.unit}/s, "
                f"ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
