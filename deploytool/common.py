"""Small helpers every stage uses: file digests, error summaries, the cache folder, log type."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

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
