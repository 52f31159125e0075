"""Auto-tuning with MetaSchedule, the tuning database, and the default schedules used without it."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DeploytoolError
from .interrupts import Stop, ctrl_c_stops_tuning
from .prefetch import insert_prefetches
from .schedules import (
    SCHEDULE_NAME,
    accumulator_lanes,
    packs_weights,
    pooled,
    register_tiled,
    schedule_kernel,
    schedule_pool,
)
from .targets import TargetSpec

Log = Callable[[str], None]

TUNING_ROOT = Path("artifacts") / "tuning"
DEFAULT_TRIALS_PER_TASK = 64
TRIAL_RUNS = 10  # timed runs of a trial
# Trials of a model with more weights than this start each run with a flushed cache (see
# make_runner); a smaller model's weights stay in cache from one run to the next (2 x 2 MB of L2
# here).
COLD_WEIGHT_BYTES = 4 << 20
# The schedule given to kernels the database does not cover: convolutions and matrix products
# get deploytool's hand-written register-tiled schedule with pre-packed weights (schedules.py);
# other kernels the most promising of a few samples of MetaSchedule's own design space for the
# target (multi-level tiling, parallel, vectorize, unroll), judged without running them (see
# _score), with fixed seeds so that builds are reproducible. One sample left most convolutions
# unvectorized (ResNet-18 30x slower than ONNX Runtime); the best of 8, 3.4x.
DEFAULT_SCHEDULE_SAMPLES = 8
DEFAULT_SCHEDULE = (f"{SCHEDULE_NAME} for convolutions and matrix products, else "
                    f"metaschedule-design-space-best-of-{DEFAULT_SCHEDULE_SAMPLES}")
DEFAULT_SCHEDULE_SEED = 1
# A searched schedule replaces the hand-written one (schedules.py) only if the database measured
# it at most this fraction of the hand-written one's time. Trials run a kernel alone; in the
# model its input was just written by the kernel before. MobileNetV2 tuned for 20 minutes
# (seeded with the hand-written schedules) took searched schedules for 10 kernels: the four
# that had won by 4-15% ran 11-135% slower inside the model, the three that had won by 20-45%
# ran as fast or faster, and the tuned package came out 4% slower than the untuned one.
SEARCH_MARGIN = 0.75
# Convolutions are computed channels-last (transposes at the edges keep the model's own layout):
# the schedules then vectorize over channels. Tuning and builds both use it, so records match.
CONV2D_LAYOUT = ["NHWC", "HWIO"]


# ---------------------------------------------------------------------------------------------
# The database


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
    ms = _meta_schedule()
    try:
        return ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")
    except Exception as err:  # TVM raises its own error types for a record it cannot read
        last = (str(err).strip().splitlines() or [repr(err)])[-1]
        raise DeploytoolError(f"tuning database {db_dir} cannot be read ({last})",
                              "Delete it and tune again, or pass another --db") from err


# ---------------------------------------------------------------------------------------------
# TVM helpers


def _import_tensor_intrin_quickly(worker: bool = False) -> None:
    """Import ``tvm.s_tir.tensor_intrin`` without its slow stack inspection.

    The module parses about a hundred TVMScript functions and each parse calls
    ``inspect.stack()``, which looks up the source file of every frame: about 100 s on a loaded
    2-core machine, a few seconds with this light stack. MetaSchedule imports it in every
    TuneContext and in every build worker (where it exceeded the build time-out). Self-contained,
    so that it can run as the build workers' initializer (``worker=True``: a worker also ignores
    Ctrl-C, which the tuning process handles).
    """
    import inspect
    import linecache
    import signal
    import sys

    if worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def light_stack(context: int = 1):
        frame, frames = sys._getframe(1), []
        while frame is not None:
            code = frame.f_code
            line = linecache.getline(code.co_filename, frame.f_lineno)
            frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno,
                                            code.co_name, [line] if line else None, 0))
            frame = frame.f_back
        return frames

    original, inspect.stack = inspect.stack, light_stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original


def _meta_schedule():
    """Import MetaSchedule (after its tensor intrinsics, see _import_tensor_intrin_quickly)."""
    _import_tensor_intrin_quickly()
    from tvm.s_tir import meta_schedule

    return meta_schedule


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _local_runner_setup(threads: int = 1) -> None:
    """A local trial worker: ignores Ctrl-C and runs kernels on as many threads as a package
    does (see dt_load): TVM's own default, half the logical CPUs on x86, measured trials on one
    thread of this 2-core machine."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(threads)


def _fastest_run(*args):
    """MetaSchedule's evaluator, reporting only a trial's fastest timed run. The local runner
    passes (rt_mod, device, evaluator_config, repeated_args); the RPC runner, its session first.

    MetaSchedule ranks records by the mean of their runs, and some runs came out 2-8x slower
    than the others of the same trial (ResNet-18's stem: 738 us at best, recorded at 2473 us,
    so a schedule 1.8x slower in the model won), most likely from the search and builds sharing
    the cores. Interference only ever slows a run down.
    """
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    return [min(run_evaluator_common(*args[-4:]))]


def _worker_initializer(function, *defaults):
    """A copy of ``function`` with no module, so that the pool pickles it by value: its workers
    may not be able to import this deploytool."""
    import types

    return types.FunctionType(function.__code__, {"__builtins__": __builtins__},
                              function.__name__, defaults or None)


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def tuning_target(target: TargetSpec):
    """The ``tvm.target.Target`` MetaSchedule needs: the build target plus ``num-cores``."""
    import tvm

    resolved = target.resolved()
    cores = resolved.target.get("num-cores") or (physical_cores() if resolved.runs_here() else 4)
    return tvm.target.Target({**resolved.target, "num-cores": int(cores)})


def _cpu_pipeline():
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline


def _channels_last(mod):
    """``mod`` with its 2-D convolutions channels-last (CONV2D_LAYOUT); unchanged when it has
    none or when TVM cannot convert it (its ConvertLayout failed on a transformer, which has no
    convolution)."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(conv2d):
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    if not found:
        return mod
    try:
        return relax.transform.ConvertLayout({"relax.nn.conv2d": CONV2D_LAYOUT})(mod)
    except Exception:  # TVM's layout inference does not cover every operator
        return mod


def fuse(mod, target):
    """Legalize and fuse ``mod`` as the build does, so that tuning tasks match build kernels.

    Kernels learn which of their arguments are constant weights (``layout_free_buffers``), whose
    layout their schedules may then change: the weights are packed at compile time (see
    :func:`pack_weights`).
    """
    import tvm
    from tvm import relax

    cpu = _cpu_pipeline()
    mod = _channels_last(mod)
    with target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target)
                                       + cpu.legalize_passes(target)
                                       + [relax.transform.AttachAttrLayoutFreeBuffers()])(mod)
    # Only convolutions and matrix products keep it: MetaSchedule's layout rewrite of other
    # kernels' constants (an LSTM's initial state) gave wrong numbers (error 0.026).
    for gv, func in _prim_funcs(mod):
        if func.attrs is not None and "layout_free_buffers" in func.attrs \
                and not packs_weights(func):
            mod[gv] = func.without_attr("layout_free_buffers")
    return mod


def pack_weights(mod):
    """Move the weight-packing blocks of scheduled kernels (tuned ones and schedules.py's) into
    their own functions and run them on the constant weights now, at compile time."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                     relax.transform.FoldConstant()])(mod)


def _is_scheduled(func) -> bool:
    return bool(func.attrs is not None and "tirx.is_scheduled" in func.attrs
                and func.attrs["tirx.is_scheduled"])


def _prim_funcs(mod):
    import tvm

    return [(gv, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def sample_default_schedule(func, target, seed: int = DEFAULT_SCHEDULE_SEED):
    """Schedule one kernel with a sample of MetaSchedule's design space for ``target``.

    Returns the scheduled PrimFunc, or None when no schedule applies (the kernel then stays as
    TVM lowers it).
    """
    import tvm

    ms = _meta_schedule()
    context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target,
                             space_generator="post-order-apply", search_strategy="replay-trace",
                             task_name="default", rand_state=seed, num_threads=1)
    try:
        spaces = context.generate_design_space()
    except Exception:  # a kernel MetaSchedule cannot analyse keeps TVM's plain lowering
        return None
    if not spaces:
        return None
    schedule = spaces[0]
    if not all(postproc.apply(schedule) for postproc in context.space_generator.postprocs):
        return None
    return schedule.mod["main"].with_attr("tirx.is_scheduled", True)


def _score(func) -> tuple[int, int]:
    """How promising a sampled schedule looks, without running it: the vector width of its
    reduction loops' innermost loop, then the size of their innermost (register) tile."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    vector, tile = 1 << 30, 1 << 30
    found = False
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if not sch.get(block).name_hint.endswith("_update"):
            continue
        loops = [sch.get(loop) for loop in sch.get_loops(block)]
        if not loops:
            continue
        found = True
        inner = loops[-1]
        width = int(inner.extent) if inner.kind == tvm.tirx.ForKind.VECTORIZED else 1
        size = math.prod(int(loop.extent) for loop in loops[-4:])
        vector, tile = min(vector, min(width, 16)), min(tile, min(size, 256))
    return (vector, tile) if found else (0, 0)


def sample_best_schedule(func, target, samples: int = DEFAULT_SCHEDULE_SAMPLES):
    """The best-scored (see _score) of ``samples`` default schedules of one kernel (seeds
    DEFAULT_SCHEDULE_SEED onwards; the first wins a tie), or None when no schedule applies."""
    best, best_score = None, None
    for seed in range(DEFAULT_SCHEDULE_SEED, DEFAULT_SCHEDULE_SEED + samples):
        scheduled = sample_default_schedule(func, target, seed)
        if scheduled is None:
            return None
        score = _score(scheduled) if samples > 1 else (0, 0)
        if best is None or score > best_score:
            best, best_score = scheduled, score
        if score == (0, 0):  # no reduction loops: every sample is as good
            break
    return best


@dataclass
class SchedulePlan:
    """How the kernels of one build were scheduled: from the database, or by default."""

    database: str | None
    tasks: int = 0
    from_database: int = 0
    hand_written: int = 0  # of the default ones: schedules.py's
    default: int = 0
    kept_default: int = 0  # of the default ones: with records the search won too narrowly
    unscheduled: int = 0
    default_schedule: str = DEFAULT_SCHEDULE
    trials_run: int | None = None
    register_tiled_records: int | None = None  # of the tuning run, see _measure_register_tiled
    tune_seconds: float | None = None

    def summary(self) -> str:
        where = f" from {self.database}" if self.database else " (no tuning database)"
        kept = (f"; {self.kept_default} of them had records, but none "
                f"{1 - SEARCH_MARGIN:.0%} faster than the default" if self.kept_default else "")
        return (f"{self.from_database}/{self.tasks} kernels tuned{where}, {self.default} with the "
                f"default schedules ({self.hand_written} register-tiled{kept}), "
                f"{self.unscheduled} unscheduled")

    def to_dict(self) -> dict:
        return asdict(self)


def build_pipeline(target: TargetSpec, database=None, plan: SchedulePlan | None = None,
                   default_schedules: bool = True):
    """The Relax pipeline for an llvm target: fuse, apply the database, schedule the rest.

    Parameters
    ----------
    target : TargetSpec
    database : JSONDatabase, optional
        Tuning records to apply; None means none.
    plan : SchedulePlan, optional
        Filled in with what was scheduled how, when the pipeline runs.
    default_schedules : bool
        Give kernels not in the database the default schedule (False leaves them unscheduled).

    Returns
    -------
    tvm.transform.Pass
    """
    import tvm
    from tvm import relax

    tvm_target = tuning_target(target)
    plan = plan if plan is not None else SchedulePlan(None)
    cpu = _cpu_pipeline()

    @tvm.transform.module_pass(opt_level=0, name="DeploytoolPipeline")
    def pipeline(mod, _ctx):
        mod = fuse(mod, tvm_target)
        plan.tasks = len(_prim_funcs(mod))
        with tvm_target:
            if database is not None:
                unscheduled = dict(_prim_funcs(mod))
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
                for gv, func in unscheduled.items():
                    if _is_scheduled(mod[gv]) and not _search_won(database, func):
                        mod[gv] = func  # scheduled below, by default
                        plan.kept_default += 1
            plan.from_database = sum(_is_scheduled(f) for _, f in _prim_funcs(mod))
            if default_schedules:
                lanes = accumulator_lanes(tvm_target)
                for gv, func in _prim_funcs(mod):
                    if _is_scheduled(func):
                        continue
                    scheduled = schedule_kernel(func, lanes)
                    plan.hand_written += scheduled is not None
                    if scheduled is None:
                        scheduled = schedule_pool(func)
                    if scheduled is None:
                        scheduled = sample_best_schedule(func, tvm_target)
                    if scheduled is not None:
                        mod[gv] = scheduled
                        plan.default += 1
            plan.unscheduled = plan.tasks - plan.from_database - plan.default
            mod = insert_prefetches(pack_weights(mod))
            return tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target)
                                            + cpu.finalize_passes(tvm_target))(mod)

    return pipeline


# ---------------------------------------------------------------------------------------------
# Tuning


@dataclass
class TuneSettings:
    """How long to tune; None means the default."""

    trials: int | None = None
    time_budget: float | None = None  # seconds
    db: Path | None = None
    seed: int | None = 0
    rpc_tracker: str | None = None  # HOST:PORT of a TVM RPC tracker
    rpc_key: str | None = None  # the device key the boards registered with the tracker
    rpc: str | None = None  # HOST:PORT of a single TVM RPC server

    def resolved_db(self, target: TargetSpec) -> Path:
        return self.db or default_db_dir(target)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class TaskResult:
    """One tuned kernel: how often the model runs it and how fast the best record is."""

    name: str
    weight: int
    flop: float
    trials: int
    best_us: float | None

    @property
    def gflops(self) -> float | None:
        return self.flop / self.best_us / 1e3 if self.best_us else None


@dataclass
class TuneResult:
    """What a tuning run produced."""

    db: Path
    tasks: list[TaskResult] = field(default_factory=list)
    trials: int = 0
    register_tiled: int = 0  # records of schedules.py's schedule, measured before the search
    seconds: float = 0.0
    stopped: str | None = None  # "interrupted", "time budget", or None when the trials ran out

    def table(self) -> str:
        total = sum(t.weight * t.best_us for t in self.tasks if t.best_us) or 1.0
        rows = [f"{'kernel':<44} {'x':>2} {'MFLOP':>8} {'trials':>6} {'best us':>9} "
                f"{'GFLOP/s':>8} {'share':>6}"]
        for t in sorted(self.tasks, key=lambda t: -(t.weight * (t.best_us or 0))):
            best = f"{t.best_us:9.1f}" if t.best_us else f"{'-':>9}"
            gflops = f"{t.gflops:8.1f}" if t.gflops else f"{'-':>8}"
            share = f"{100 * t.weight * t.best_us / total:5.1f}%" if t.best_us else f"{'-':>6}"
            rows.append(f"{t.name[:44]:<44} {t.weight:>2} {t.flop / 1e6:8.2f} {t.trials:>6} "
                        f"{best} {gflops} {share}")
        rows.append(f"sum of best kernel times x weight: {total:.1f} us")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {"database": str(self.db), "trials": self.trials,
                "register_tiled": self.register_tiled,
                "seconds": round(self.seconds, 1), "stopped": self.stopped,
                "tasks": [{**asdict(t), "gflops": t.gflops} for t in self.tasks]}


STOP_MARK = "deploytool stops tuning"


class StopTuning(Exception):
    """Raised inside MetaSchedule's loop to end a tuning run early (not a user error); it comes
    back through TVM's FFI as a RuntimeError carrying STOP_MARK."""


def _progress_callback(stop: Stop, start: float, total_trials: int, names: list[str],
                       flops: list[float], log: Log):
    ms = _meta_schedule()
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.trials = 0
            self.best: dict[int, float] = {}

        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
            self.trials += len(runner_results)
            times = [sum(r.run_secs) / len(r.run_secs) for r in runner_results
                     if r.error_msg is None and r.run_secs]
            if times:
                best = min(float(t) for t in times)
                self.best[task_id] = min(self.best.get(task_id, math.inf), best)
            failed = len(runner_results) - len(times)
            elapsed = time.monotonic() - start
            left = ""
            if stop.deadline is not None:
                left = f", {max(0.0, stop.deadline - time.monotonic()) / 60:.1f} min left"
            best_us = self.best.get(task_id)
            best_text = "no valid trial yet"
            if best_us is not None:
                best_text = (f"best {best_us * 1e6:.1f} us "
                             f"({flops[task_id] / best_us / 1e9:.1f} GFLOP/s)")
            log(f"  [{elapsed:6.0f} s] task {task_id + 1}/{len(names)} {names[task_id][:36]}: "
                f"{best_text}{f', {failed} failed' if failed else ''}; "
                f"{self.trials}/{total_trials} trials{left}")
            if stop.check():
                # This batch's records are already in the database (the default callbacks,
                # which commit them, run before this one); leave the tuner by an exception.
                raise StopTuning(f"{STOP_MARK} ({stop.reason})")

    return Progress()


def tune_module(mod, target: TargetSpec, settings: TuneSettings | None = None,
                log: Log | None = None) -> TuneResult:
    """Tune every kernel of a Relax module with MetaSchedule; records go to the database.

    Trials are built and run in separate processes with a time-out (MetaSchedule's LocalBuilder
    and LocalRunner), so a kernel that crashes or hangs costs one trial. Records are written to
    the database as they are measured: an interrupted run keeps them.

    Parameters
    ----------
    mod : tvm.IRModule
        The Relax module (as imported).
    target : TargetSpec
    settings : TuneSettings, optional
    log : callable, optional
        Receives progress lines.

    Returns
    -------
    TuneResult
    """
    settings = settings or TuneSettings()
    log = log or (lambda _line: None)
    with ctrl_c_stops_tuning(log) as stop:
        return _tune(mod, target, settings, log, stop)


def _tune(mod, target: TargetSpec, settings: TuneSettings, log: Log, stop: Stop) -> TuneResult:
    if target.target.get("kind") != "llvm":
        raise DeploytoolError(f"tuning supports llvm (CPU) targets, not {target.target['kind']}",
                              "Tune a CPU target")
    ms = _meta_schedule()
    weight_size = weight_bytes(mod)
    cold = weight_size > COLD_WEIGHT_BYTES
    runner = make_runner(target, settings, cold=cold)
    tvm_target = tuning_target(target)
    db_dir = settings.resolved_db(target)
    database = open_database(db_dir, create=True)
    fused = fuse(mod, tvm_target)
    extracted = ms.relax_integration.extract_tasks(fused, tvm_target)
    extracted = [t for t in extracted if not _is_scheduled(t.dispatched[0]["main"])]
    if not extracted:
        raise DeploytoolError("the model has no kernels to tune", "Compile it without --tune")
    trials = settings.trials or DEFAULT_TRIALS_PER_TASK * len(extracted)
    per_task = max(1, math.ceil(2 * trials / len(extracted)))
    # Every kernel gets a batch; batches of at most 16 so that Ctrl-C and the budget act quickly.
    per_iter = max(1, min(16, math.ceil(trials / len(extracted))))
    names = [t.task_name for t in extracted]
    flops = [_flop(t.dispatched[0]) for t in extracted]
    log(f"tuning {len(extracted)} kernels, {trials} trials (at most {per_task} per kernel)"
        f"{f', time budget {settings.time_budget / 60:.1f} min' if settings.time_budget else ''}"
        f", database {db_dir}")
    log(f"each trial runs {'from a flushed cache' if cold else 'with a warm cache'}: the model "
        f"has {weight_size / 2**20:.1f} MiB of weights"
        f"{'' if cold else ', which stay in cache from one inference to the next'}")
    import logging

    # MetaSchedule's own log goes to files in the database's logs/; the console gets our lines.
    # Its logging set-up fails when run twice in a process with an unnamed handler attached, so
    # start it from a clean logger each time.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        ms_logger.removeHandler(handler)
        handler.close()
    ms_logger.setLevel(logging.WARNING)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted, work_dir=str(db_dir / "logs"), space="post-order-apply",
        strategy=ms.search_strategy.EvolutionarySearch(
            population_size=min(2048, max(64, 16 * per_task)),
            init_min_unmeasured=min(50, max(8, 4 * per_task))),
        num_threads=tvm_target.attrs["num-cores"], seed=settings.seed)
    start = time.monotonic()
    stop.deadline = start + settings.time_budget if settings.time_budget else None
    progress = _progress_callback(stop, start, trials, names, flops, log)
    callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [progress]
    cores = int(tvm_target.attrs["num-cores"])
    builder = ms.builder.LocalBuilder(
        max_workers=cores, timeout_sec=120, f_build=_build_trial, f_export=_exporter(target.cxx),
        initializer=_worker_initializer(_import_tensor_intrin_quickly, True))
    seeded = 0
    if not stop.check():
        seeded = _measure_register_tiled(extracted, database, builder, runner, tvm_target, log)
    try:
        if stop.check():
            raise StopTuning(f"{STOP_MARK} ({stop.reason})")
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(db_dir),
                      max_trials_global=trials, max_trials_per_task=per_task,
                      num_trials_per_iter=per_iter, builder=builder, runner=runner,
                      database=database, cost_model="xgb", measure_callbacks=callbacks,
                      # Round-robin joins each batch before the next, so its records land
                      # (and Ctrl-C or the budget act) batch by batch; the gradient scheduler
                      # only joins after a first batch of every kernel, minutes on a CNN.
                      task_scheduler="round-robin")
    except Exception as err:
        if stop.reason is None or STOP_MARK not in str(err):
            raise
    result = TuneResult(db=db_dir, trials=progress.trials, register_tiled=seeded,
                        seconds=time.monotonic() - start, stopped=stop.reason)
    for task, name, flop, weight in zip(extracted, names, flops, weights, strict=True):
        result.tasks.append(TaskResult(name=name, weight=int(weight), flop=flop,
                                       trials=_count(database, task.dispatched[0]),
                                       best_us=_best_us(database, task.dispatched[0])))
    return result


def _measure_register_tiled(extracted, database, builder, runner, tvm_target, log: Log) -> int:
    """Measure schedules.py's schedule of each kernel it knows (register-tiled, or pooling) and
    store it as a record.

    The search then starts from it (the evolutionary search seeds its population with the best
    records), and a build takes a searched schedule only where it beat this one by
    SEARCH_MARGIN. Kernels whose database already holds this very schedule (a resumed run) are
    skipped; one measured by an older deploytool, whose schedules differed, is measured again.
    Returns how many records were stored.
    """
    import shutil

    ms = _meta_schedule()
    lanes, todo = accumulator_lanes(tvm_target), []
    for task in extracted:
        mod = task.dispatched[0]
        sch = register_tiled(mod, lanes)
        if sch is None:
            sch = pooled(mod)
        if sch is None or any(str(r.trace) == str(sch.trace) for r in _records(database, mod)):
            continue
        todo.append((sch, database.commit_workload(mod)))
    if not todo:
        return 0
    builds = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for sch, _ in todo])
    measured, inputs = [], []
    for (sch, workload), built in zip(todo, builds, strict=True):
        if built.error_msg is None:
            args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
            measured.append((sch, workload, args, built.artifact_path))
            inputs.append(ms.runner.RunnerInput(built.artifact_path, "cpu", args))
    stored = 0
    for (sch, workload, args, artifact), future in zip(measured, runner.run(inputs),
                                                       strict=True):
        ran = future.result()
        shutil.rmtree(os.path.dirname(artifact), ignore_errors=True)
        if ran.error_msg is None and ran.run_secs:
            record = ms.database.TuningRecord(sch.trace, workload, ran.run_secs, tvm_target, args)
            database.commit_tuning_record(record)
            stored += 1
    log(f"measured the default schedule (register-tiled or pooling) of {stored} kernel(s); "
        "the search starts from it")
    return stored


def _build_trial(mod, target, _params):
    """MetaSchedule's default build of a trial, plus what a package build adds (weight
    prefetches, scratch buffers on the stack), so that a record is measured as it will run."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from deploytool.lowering import tir_pipeline
    from deploytool.prefetch import insert_prefetches

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(insert_prefetches(mod), target=target, pipeline=tir_pipeline())


def _exporter(cxx: str):
    """The builder's export function: None (MetaSchedule's own) for g++, else cross-compiling."""
    if cxx == "g++":
        return None

    def export(module):  # pickled by value into the build workers
        import os
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(), "tuning.so")
        module.export_library(path, fcompile=cc.cross_compiler(cxx))
        return path

    return export


def _host_port(text: str, option: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise DeploytoolError(f"{option} takes HOST:PORT, got '{text}'",
                              f"Write e.g. {option} 127.0.0.1:9190")
    return host, int(port)


def make_runner(target: TargetSpec, settings: TuneSettings, cold: bool = False):
    """The MetaSchedule runner that measures trials: local, or remote through TVM RPC.

    Local trials run in a separate process with a 30 s time-out (LocalRunner); RPC trials run on
    the board that the tracker (or the single server) hands out, with the same time-out.
    ``cold`` starts each timed run with every argument but the input flushed from the cache: in
    a model whose weights do not fit in cache, no kernel finds its weights there, and schedules
    that only won with warm weights lost inside the model (ResNet-18 tuned with warm runs came
    out 4% slower than untuned).
    """
    ms = _meta_schedule()
    evaluator = (ms.runner.EvaluatorConfig(number=1, repeat=TRIAL_RUNS, min_repeat_ms=0,
                                           enable_cpu_cache_flush=True) if cold else
                 ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50))
    if settings.rpc_tracker and settings.rpc:
        raise DeploytoolError("--rpc-tracker and --rpc were both given", "Pass one of them")
    if settings.rpc_tracker:
        if not settings.rpc_key:
            raise DeploytoolError("--rpc-tracker needs --rpc-key",
                                  "Pass the key the boards registered with, e.g. --rpc-key rpi4")
        host, port = _host_port(settings.rpc_tracker, "--rpc-tracker")
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port,
                                     tracker_key=settings.rpc_key, session_timeout_sec=30)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                   f_run_evaluator=_worker_initializer(_fastest_run),
                                   initializer=_worker_initializer(_ignore_sigint))
    if settings.rpc:
        host, port = _host_port(settings.rpc, "--rpc")

        def connect_server(_config):  # pickled by value into the runner's worker
            from tvm import rpc

            return rpc.connect(host, port, session_timeout=30)

        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                     session_timeout_sec=30)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                   f_create_session=connect_server,
                                   f_run_evaluator=_worker_initializer(_fastest_run),
                                   initializer=_worker_initializer(_ignore_sigint))
    if not target.runs_here():
        raise DeploytoolError(
            f"this machine cannot measure kernels built for {target.name} ({target.arch})",
            "Tune on the board over TVM RPC: --rpc-tracker HOST:PORT --rpc-key KEY, or "
            "--rpc HOST:PORT")
    return ms.runner.LocalRunner(timeout_sec=30, evaluator_config=evaluator,
                                 f_run_evaluator=_worker_initializer(_fastest_run),
                                 initializer=_worker_initializer(_local_runner_setup,
                                                                 physical_cores()))


def weight_bytes(mod) -> int:
    """The bytes of the constants (the weights) a Relax module holds."""
    import tvm
    from tvm import relax

    total = []

    def visit(expr):
        if isinstance(expr, tvm.ir.expr.GenericConst):  # a tensor constant
            elements = math.prod(int(d) for d in expr.ty.shape)
            total.append(elements * tvm.runtime.DataType(expr.ty.dtype).bits // 8)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sum(total)


def _flop(mod) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # not every kernel can be analysed; its GFLOP/s is then unknown
        return 0.0


def _records(database, mod) -> list:
    if not database.has_workload(mod):
        return []
    workload = database.commit_workload(mod)
    return [r for r in database.get_top_k(workload, 10 ** 6) if r.run_secs]


def _search_won(database, func) -> bool:
    """Whether the database's best record for ``func`` is a searched schedule that beat the
    hand-written one by SEARCH_MARGIN. A kernel without a hand-written record (one schedules.py
    does not know, or a database tuned without them) takes the best record."""
    import tvm

    # keyed as MetaSchedule's task extraction commits it
    records = _records(database, tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    hand = [_mean_us(r) for r in records if not _searched(r.trace)]
    if not hand:
        return True
    best = min(records, key=_mean_us)
    return _searched(best.trace) and _mean_us(best) <= SEARCH_MARGIN * min(hand)


def _searched(trace) -> bool:
    """Whether a trace came from the search: the hand-written schedules sample nothing."""
    return any(inst.kind.name.startswith("Sample") for inst in trace.insts)


def _mean_us(record) -> float:
    return sum(float(s) for s in record.run_secs) / len(record.run_secs) * 1e6


def _count(database, mod) -> int:
    return len(_records(database, mod))


def _best_us(database, mod) -> float | None:
    records = _records(database, mod)
    if not records:
        return None
    return min(_mean_us(r) for r in records)


def schedule_build(target: TargetSpec, settings: TuneSettings | None = None,
                   tuned: TuneResult | None = None):
    """The pipeline and plan for a build: the database's records, default schedules for the rest.

    Parameters
    ----------
    target : TargetSpec
    settings : TuneSettings, optional
        Where the database is (``settings.db``; None means :func:`default_db_dir`).
    tuned : TuneResult, optional
        The tuning run made for this build, recorded in the plan.

    Returns
    -------
    (tvm.transform.Pass or None, SchedulePlan or None)
        (None, None) for targets other than llvm, which keep TVM's default pipeline.
    """
    if target.target.get("kind") != "llvm":
        return None, None
    settings = settings or TuneSettings()
    db_dir = settings.resolved_db(target)
    database = open_database(db_dir)
    plan = SchedulePlan(database=str(db_dir) if database is not None else None)
    if tuned is not None:
        plan.trials_run, plan.tune_seconds = tuned.trials, round(tuned.seconds, 1)
        plan.register_tiled_records = tuned.register_tiled
    return build_pipeline(target, database, plan), plan


# ---------------------------------------------------------------------------------------------
# From a model file


@dataclass
class TuneOptions:
    """Every option of ``deploytool tune``, resolved; None means the default."""

    model: Path
    target: str = "cpu"
    inputs: list | None = None
    settings: TuneSettings = field(default_factory=TuneSettings)

    def display(self, target: TargetSpec) -> str:
        inputs = ", ".join(map(str, self.inputs)) if self.inputs else "from the model file"
        s = self.settings
        budget = f"{s.time_budget / 60:.1f} min" if s.time_budget else "none"
        where = "here, in a separate process per trial"
        if s.rpc_tracker:
            where = f"over RPC on a '{s.rpc_key}' board from tracker {s.rpc_tracker}"
        elif s.rpc:
            where = f"over RPC on server {s.rpc}"
        return (f"model        {self.model}\ntarget       {self.target}\ninputs       {inputs}\n"
                f"trials       {s.trials or f'{DEFAULT_TRIALS_PER_TASK} per kernel'}\n"
                f"time budget  {budget}\ndatabase     {s.resolved_db(target)}\n"
                f"measured     {where}")


def tune_model(options: TuneOptions, log: Log | None = None) -> TuneResult:
    """Load a model file, import it and tune it (see :func:`tune_module`)."""
    from .frontends import load_model, to_onnx
    from .importer import import_relax
    from .targets import load_target

    target = load_target(options.target)
    with ctrl_c_stops_tuning(log or (lambda _line: None)):
        source = load_model(options.model, options.inputs)
        mod = import_relax(to_onnx(source))
        return tune_module(mod, target, options.settings, log)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``20m``, ``1.5h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    scale = units.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise DeploytoolError(f"'{text}' is not a duration", "Write e.g. 90s, 20m or 1.5h")
    return seconds
