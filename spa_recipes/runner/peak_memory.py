"""Peak memory of one stage, for the manifest: the main process's resident set, and the GPU's allocations.

The process-lifetime maximum (``ru_maxrss``) cannot tell stages apart. On Linux the kernel keeps the resident
high-water mark in ``/proc/self/status`` (``VmHWM``) and resets it to the current resident size when "5" is written
to ``/proc/self/clear_refs`` (``proc(5)``); so a stage's peak is ``VmHWM`` read at its end after a reset at its
start. It counts this process only: not child processes (a vLLM engine's workers, data loaders, tokenizer threads
are threads and do count), and not the other processes of a multi-process run (each records its own; the manifest
keeps main's). It includes what earlier stages left allocated (the allocator seldom returns freed heap at once).
Where the reset is not available (not Linux, a restricted ``/proc``) no figure is recorded.

Before the reset, the heap that earlier stages freed is handed back to the system (a garbage collection, then
glibc's ``malloc_trim``): without it a stage after training started with the trainer's freed gigabytes still
resident (eval_baseline after seed_dpo for SmolLM2-135M: 2,584 MiB instead of ~1 GB), and a run held them too.

On a GPU, ``torch.cuda.max_memory_allocated`` (tensors, not the caching allocator's reserve or a vLLM engine's
pool) is reset at the start and read at the end, for this process's device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 2**20


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Collect garbage and return the freed heap to the system (glibc only; elsewhere the collection alone)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _cuda() -> Any:
    torch = sys.modules.get("torch")  # a stage that never imported torch used no GPU
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class StagePeak:
    """Resets the peaks when made; :meth:`read` gives the stage's figures (``peak_rss_mib``, ``peak_gpu_mib``)."""

    def __init__(self) -> None:
        release_freed_memory()
        self.rss = _reset_rss_peak()
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()

    def read(self) -> dict[str, float]:
        """The stage's peaks in MiB; a figure this machine cannot measure is left out."""
        peaks: dict[str, float] = {}
        hwm = _status_kib("VmHWM") if self.rss else None
        if hwm is not None:
            peaks["peak_rss_mib"] = round(hwm / 1024, 1)
        cuda = _cuda()
        if cuda is not None:
            peaks["peak_gpu_mib"] = round(cuda.max_memory_allocated() / MIB, 1)
        return peaks


def current_rss_mib() -> float | None:
    """This process's resident size now (``VmRSS``), in MiB."""
    kib = _status_kib("VmRSS")
    return None if kib is None else round(kib / 1024, 1)
