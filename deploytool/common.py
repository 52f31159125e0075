"""Small helpers every stage uses: digests, error summaries, the cache, locks, Ctrl-C, log type."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import DeploytoolError

# Receives one progress line at a time (print, click.echo, a list's append).
Log = Callable[[str], None]


def cache_root() -> Path:
    """``$DEPLOYTOOL_CACHE`` or ``~/.cache/deploytool``: native builds, runtimes, driver stub."""
    return Path(os.environ.get("DEPLOYTOOL_CACHE", Path.home() / ".cache" / "deploytool"))


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def last_line(err: Exception | str, default: str | None = None, limit: int | None = None) -> str:
    """The last non-empty line of an error's message (where TVM and torch put the cause), or
    ``default`` (the error's type name) when it has none; cut to ``limit`` characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    line = lines[-1] if lines else (default if default is not None else type(err).__name__)
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."


def npy_name(tensor_name: str) -> str:
    """The .npy file name of a tensor (names may hold characters a file name cannot)."""
    return "".join("_" if c in "/\\: " else c for c in tensor_name) + ".npy"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Errors of a full disk or quota: the machine, not deploytool, is at fault.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(err: OSError, where: Path | str | None = None) -> DeploytoolError:
    """The one-line error for an OSError of a full disk (see DISK_FULL)."""
    place = where or err.filename or "the disk"
    return DeploytoolError(f"no space left on the device writing {place} "
                           f"({os.strerror(err.errno)})", "Free some space, or write elsewhere")


@contextmanager
def exclusive_lock(lock_path: Path, busy: Callable[[str], DeploytoolError]) -> Iterator[None]:
    """Hold an exclusive fcntl lock on ``lock_path`` for the block; the file is created and
    removed again. When another process holds it, raise ``busy(holder)`` (holder: "pid N")
    at once instead of waiting. The lock dies with its process, so a killed holder never
    blocks the next one; a lock file left by one is reused."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno in DISK_FULL:
                raise disk_full_error(err, lock_path) from err
            raise DeploytoolError(f"cannot create the lock file {lock_path} "
                                  f"({os.strerror(err.errno or 0)})",
                                  "Check that its folder is writable") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise busy(f"pid {holder}" if holder.isdigit() else "another process") from None
        try:  # the holder before us may have removed the file we opened: lock the new one
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


# Ctrl-C: set by the CLI's SIGINT handler, so that an interrupt that a library turned into an
# ordinary exception (TVM raises RuntimeError('') for it) is still known as one.
_INTERRUPTED = threading.Event()


def watch_ctrl_c() -> None:
    """Install a SIGINT handler that records the Ctrl-C, then raises KeyboardInterrupt as
    Python's own does (main thread only)."""

    def interrupted(signum, frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupted)


def was_interrupted() -> bool:
    """Whether a Ctrl-C arrived since :func:`watch_ctrl_c` (or :func:`note_interrupt`)."""
    return _INTERRUPTED.is_set()


def note_interrupt(value: bool = True) -> None:
    """Record (or with False forget) a Ctrl-C."""
    _INTERRUPTED.set() if value else _INTERRUPTED.clear()


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived (a stage boundary calls this, so that an
    interrupt a library swallowed does not let the next stage start)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt
