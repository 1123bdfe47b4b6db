"""One run directory, one writer: the lock file ``<run_dir>/.lock`` taken for the whole of a run.

The main process of a run opens ``.lock`` and holds an exclusive ``fcntl.flock`` on it from before the first
stage until the run ends (however it ends); the kernel frees the lock when the process dies, SIGKILL included.
The file also names its holder as JSON (host, pid, its start time, when, the command line), for the message a
second launch gets, and for filesystems where ``flock`` does not reach across machines:

* ``flock`` taken by someone else: the directory is in use; refused.
* ``flock`` free, but the file names a holder on this host whose process still runs (same pid, same process
  start time): refused as well (a filesystem whose locks do not work).
* ``flock`` free and the holder on this host is gone: taken over, with a warning naming the old holder.
* ``flock`` free and the holder on another host: this host cannot tell whether it still runs (on a shared
  filesystem ``flock`` may be local to each machine), so it is refused, unless ``force`` says the holder
  is gone (``spa-recipe run --force``).

A run that ends empties the file and lets go of the lock; the empty file stays (deleting a lock file races with
the next launch opening it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spa_recipes.errors import UserError

LOCK_FILE = ".lock"

try:  # pragma: no cover - every POSIX system has it
    import fcntl
except ImportError:  # pragma: no cover - Windows: the holder's JSON alone
    fcntl = None  # type: ignore[assignment]


class RunDirLocked(UserError):
    """The run directory is in use by another run (exit code 2)."""


@dataclass
class RunLock:
    """A held run-directory lock; :meth:`release` lets it go.

    Attributes:
        path: the lock file.
        fd: the open descriptor holding the ``flock`` (None once released).
        took_over: the warning line when a dead run's lock was taken over, else None.
    """

    path: Path
    fd: int | None
    took_over: str | None = None

    def release(self) -> None:
        """Empty the lock file and let go of the lock (idempotent; never raises)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def acquire(run_dir: Path, *, force: bool = False, command: list[str] | None = None) -> RunLock:
    """Take the run directory's lock (creating the directory), or refuse with the holder named.

    Args:
        run_dir: the run directory.
        force: take over a lock whose holder is on another host (the caller says it is gone). A lock held by
            a live process that ``flock`` or this host can see is never taken.
        command: the command line to record (default: this process's).

    Returns:
        The held lock; call :meth:`RunLock.release` when the run ends.

    Raises:
        RunDirLocked: another live run holds the directory, or one on another host may (without ``force``).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _flock(fd):
            raise RunDirLocked(_in_use(run_dir, _read_holder(fd)))
        holder = _read_holder(fd)
        took_over = None
        if holder is not None and not _is_self(holder):
            if holder.get("host") == socket.gethostname():
                if _alive(holder):
                    raise RunDirLocked(_in_use(run_dir, holder))
                took_over = f"taking over {run_dir} from {_describe(holder)}, which is no longer running"
            elif not force:
                raise RunDirLocked(
                    _in_use(
                        run_dir,
                        holder,
                        tail="; this host cannot see whether it still runs: if it does not, run again with --force",
                    )
                )
            else:
                took_over = f"taking over {run_dir} from {_describe(holder)} (--force)"
        _write_holder(fd, command)
    except BaseException:
        os.close(fd)
        raise
    return RunLock(path, fd, took_over)


def read_holder(run_dir: Path) -> dict[str, Any] | None:
    """The holder the lock file names (None when free or unreadable).

    Args:
        run_dir: the run directory.

    Returns:
        The holder's JSON (host, pid, pid_start, started, command), or None.
    """
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _flock(fd: int) -> bool:
    """Whether the exclusive lock was taken; True where the filesystem has no locks (the JSON decides)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP...: a filesystem without flock
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    except OSError:
        return None
    if not data.strip():
        return None
    try:
        holder = json.loads(data)
    except ValueError:
        return {}  # being written, or garbage: a holder we cannot name
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, command: list[str] | None) -> None:
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "started": time.time(),
        "command": _command_line(command),
    }
    data = (json.dumps(holder, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.fsync(fd)


def _command_line(command: list[str] | None) -> str:
    if command is None:
        argv = list(sys.argv)
        program = Path(argv[0]).name if argv else "spa-recipe"
        if program in ("__main__.py", "-m", "-c", ""):
            program = "spa-recipe"
        command = [program, *argv[1:]]
    return shlex.join(command)


def _is_self(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder's process (on this host) still runs: its pid exists, with the same start time."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    recorded, now = holder.get("pid_start"), _process_start(pid)
    return recorded is None or now is None or recorded == now  # a reused pid starts at another time


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    when = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, int | float) else "?"
    command = str(holder.get("command", ""))
    if len(command) > 100:
        command = command[:99] + "…"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {since}" + (
        f" ({command})" if command else ""
    )


def _in_use(run_dir: Path, holder: dict[str, Any] | None, tail: str = "; wait for it, or stop it") -> str:
    return f"{run_dir} is in use by {_describe(holder or {})}{tail}"
