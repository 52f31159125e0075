"""The tuning database: MetaSchedule's JSON records, checked, opened and queried."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..common import exclusive_lock
from ..errors import DeploytoolError
from ..schedules.metaschedule import meta_schedule
from ..targets import TargetSpec

TUNING_ROOT = Path("artifacts") / "tuning"

# A searched schedule replaces the hand-written one (schedules.py) only if the database measured
# it at most this fraction of the hand-written one's time. Trials run a kernel alone; in the
# model its input was just written by the kernel before. MobileNetV2 tuned for 20 minutes
# (seeded with the hand-written schedules) took searched schedules for 10 kernels: the four
# that had won by 4-15% ran 11-135% slower inside the model, the three that had won by 20-45%
# ran as fast or faster, and the tuned package came out 4% slower than the untuned one.
SEARCH_MARGIN = 0.75


def default_db_dir(target: TargetSpec) -> Path:
    """``artifacts/tuning/<target name>-<resolved cpu>``: records only apply to the CPU they came
    from."""
    resolved = target.resolved()
    cpu = resolved.cpu or resolved.target.get("arch") or resolved.target.get("kind")
    return TUNING_ROOT / f"{target.name}-{cpu}"


def _db_files(db_dir: Path) -> tuple[Path, Path]:
    return db_dir / "database_workload.json", db_dir / "database_tuning_record.json"


def check_database(db_dir: Path) -> None:
    """Raise a clear error when a database file is not the JSON-lines MetaSchedule writes."""
    for path in _db_files(db_dir):
        if not path.exists():
            continue
        if path.is_dir():
            raise DeploytoolError(f"tuning database file {path} is a folder",
                                  "Remove it or pass another --db")
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                raise DeploytoolError(
                    f"tuning database {db_dir} is corrupt ({path.name} line {number}: {err.msg})",
                    f"Delete {path} (or the line) and tune again, or pass another --db") from err


LOCK = ".deploytool.lock"


def lock_database(db_dir: Path):
    """Hold the database folder for one tuning run (an fcntl lock on a file in it): a second
    run into the same database fails at once in one line, so no run's records are lost to the
    other's writes. Compiles read the database without the lock."""
    if db_dir.exists() and not db_dir.is_dir():
        raise DeploytoolError(f"tuning database {db_dir} is not a folder",
                              "Pass a folder with --db")
    try:
        db_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DeploytoolError(f"cannot create the tuning database {db_dir} "
                              f"({os.strerror(err.errno or 0)})", "Pass another --db") from err
    return exclusive_lock(db_dir / LOCK, lambda holder: DeploytoolError(
        f"tuning database {db_dir} is in use by another deploytool tune ({holder})",
        "Wait for it to finish (its records then serve this tuning too), or pass another --db"))


def open_database(db_dir: Path, create: bool = False):
    """Open the MetaSchedule JSON database in ``db_dir``.

    Parameters
    ----------
    db_dir : Path
        The folder holding ``database_workload.json`` and ``database_tuning_record.json``.
    create : bool
        Create the folder and empty files if they do not exist.

    Returns
    -------
    tvm.s_tir.meta_schedule.database.JSONDatabase or None
        None when the folder holds no database and ``create`` is False.
    """
    workload, records = _db_files(db_dir)
    if not create and not (workload.exists() and records.exists()):
        return None
    if db_dir.exists() and not db_dir.is_dir():
        raise DeploytoolError(f"tuning database {db_dir} is not a folder",
                              "Pass a folder with --db")
    check_database(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    ms = meta_schedule()
    try:
        return ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")
    except Exception as err:  # TVM raises its own error types for a record it cannot read
        last = (str(err).strip().splitlines() or [repr(err)])[-1]
        raise DeploytoolError(f"tuning database {db_dir} cannot be read ({last})",
                              "Delete it and tune again, or pass another --db") from err


def records_of(database, mod) -> list:
    if not database.has_workload(mod):
        return []
    workload = database.commit_workload(mod)
    return [r for r in database.get_top_k(workload, 10 ** 6) if r.run_secs]


def search_won(database, func) -> bool:
    """Whether the database's best record for ``func`` is a searched schedule that beat the
    hand-written one by SEARCH_MARGIN. A kernel without a hand-written record (one schedules.py
    does not know, or a database tuned without them) takes the best record."""
    import tvm

    # keyed as MetaSchedule's task extraction commits it
    records = records_of(database, tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    hand = [mean_us(r) for r in records if not searched(r.trace)]
    if not hand:
        return True
    best = min(records, key=mean_us)
    return searched(best.trace) and mean_us(best) <= SEARCH_MARGIN * min(hand)


def searched(trace) -> bool:
    """Whether a trace came from the search: the hand-written schedules sample nothing."""
    return any(inst.kind.name.startswith("Sample") for inst in trace.insts)


def mean_us(record) -> float:
    return sum(float(s) for s in record.run_secs) / len(record.run_secs) * 1e6


def count_records(database, mod) -> int:
    return len(records_of(database, mod))


def best_us(database, mod) -> float | None:
    records = records_of(database, mod)
    if not records:
        return None
    return min(mean_us(r) for r in records)
