"""The warnings TVM, torch and ONNX print during a compile, collected instead of shown.

A compile of a Swin Transformer printed 158 copies of one TVM warning and every .pt2 compile a
torch FutureWarning: noise to a user who cannot act on them. :func:`collected` gathers Python
warnings and whatever C++ code writes to stderr (file descriptor 2) for the length of a block;
the compile prints one line with their count, ``--verbose`` prints them, and the package's
``build.log`` keeps them.
"""

from __future__ import annotations

import faulthandler
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .common import Log

# The time a line starts with, dropped so that repeats are alike: TVM's LOG(WARNING)
# "[22:57:23] /path/transform.h:1261: Warning: ..." and torch's "W1204 23:03:40.865000 2345 ".
_TIME_PREFIX = re.compile(r"^(\[\d\d:\d\d:\d\d\] |[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ )")


@dataclass
class Messages:
    """What a block printed to stderr and the Python warnings it raised, one record each."""

    records: list[str] = field(default_factory=list)

    def counted(self) -> list[tuple[str, int]]:
        """Each distinct record with how often it came, in order of first appearance."""
        return list(Counter(self.records).items())

    def summary(self) -> str:
        """One line: how many warnings, and where to read them."""
        distinct = len(set(self.records))
        alike = f", {distinct} distinct" if distinct != len(self.records) else ""
        return (f"  warnings   {len(self.records)} from TVM and torch{alike} "
                "(--verbose prints them; the package's build.log keeps them)")

    def lines(self) -> list[str]:
        """The distinct records, each with its count when it came more than once."""
        return [f"    {record}" + (f"  (x{count})" if count > 1 else "")
                for record, count in self.counted()]

    def report(self, log: Log, verbose: bool) -> None:
        """The summary line (nothing when there were none), and with ``verbose`` the records."""
        if not self.records:
            return
        log(self.summary())
        if verbose:
            for line in self.lines():
                log(line)


@contextmanager
def collected() -> Iterator[Messages]:
    """Collect Python warnings and stderr output (also a child process's) for the block.

    A fatal signal in C++ code still reaches the terminal: ``faulthandler`` writes the Python
    traceback to the real stderr before the process dies.
    """
    messages = Messages()
    sys.stderr.flush()
    terminal = os.dup(2)
    # Unless the host enabled it already (pytest does), for its own file.
    fault_file = None if faulthandler.is_enabled() else os.fdopen(os.dup(terminal), "w")
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        os.dup2(sink.fileno(), 2)
        if fault_file:
            faulthandler.enable(fault_file)
        try:
            yield messages
        finally:
            sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
            if fault_file:
                faulthandler.disable()
                fault_file.close()
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            messages.records = [_python_warning(w) for w in caught] + stderr_records(text)


def _python_warning(caught: warnings.WarningMessage) -> str:
    return (f"{os.path.basename(caught.filename)}:{caught.lineno}: "
            f"{caught.category.__name__}: {str(caught.message).strip()}")


def stderr_records(text: str) -> list[str]:
    """Split stderr output into records: a line and the indented lines that follow it (a
    warning's source line, a traceback's frames). TVM's time prefix is dropped, so that repeats
    of one warning are alike."""
    records: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if records and line[0].isspace():
            records[-1] += "\n" + line.rstrip()
        else:
            records.append(_TIME_PREFIX.sub("", line.rstrip()))
    return records


def silence_teardown() -> None:
    """Send stderr to the null device from now on: for the end of a process that collected
    messages, where TVM objects that outlive the command (in an exception's frames, in TVM's
    own state) print warnings as they are destroyed."""
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
