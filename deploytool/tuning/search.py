"""The search: MetaSchedule tunes every kernel of a model; records go to the database."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..build.cpu_pipeline import fuse, is_scheduled
from ..common import Log
from ..errors import DeploytoolError
from ..schedules.metaschedule import import_tensor_intrin_quickly, meta_schedule, tuning_target
from ..targets import TargetSpec
from .database import best_us, count_records, lock_database, open_database
from .interrupts import Stop, ctrl_c_stops_tuning
from .measure import (
    COLD_WEIGHT_BYTES,
    build_trial,
    by_value,
    exporter,
    make_runner,
    measure_register_tiled,
    weight_bytes,
)
from .settings import TuneSettings

DEFAULT_TRIALS_PER_TASK = 64


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
    ms = meta_schedule()
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
    if target.target.get("kind") != "llvm":
        raise DeploytoolError(f"tuning supports llvm (CPU) targets, not {target.target['kind']}",
                              "Tune a CPU target")
    with ctrl_c_stops_tuning(log) as stop, lock_database(settings.resolved_db(target)):
        return _tune(mod, target, settings, log, stop)


def _tune(mod, target: TargetSpec, settings: TuneSettings, log: Log, stop: Stop) -> TuneResult:
    ms = meta_schedule()
    weight_size = weight_bytes(mod)
    cold = weight_size > COLD_WEIGHT_BYTES
    runner = make_runner(target, settings, cold=cold)
    tvm_target = tuning_target(target)
    db_dir = settings.resolved_db(target)
    database = open_database(db_dir, create=True)
    fused = fuse(mod, tvm_target)
    extracted = ms.relax_integration.extract_tasks(fused, tvm_target)
    extracted = [t for t in extracted if not is_scheduled(t.dispatched[0]["main"])]
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
        max_workers=cores, timeout_sec=120, f_build=build_trial, f_export=exporter(target.cxx),
        initializer=by_value(import_tensor_intrin_quickly, True))
    seeded = 0
    if not stop.check():
        seeded = measure_register_tiled(extracted, database, builder, runner, tvm_target, log)
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
                                       trials=count_records(database, task.dispatched[0]),
                                       best_us=best_us(database, task.dispatched[0])))
    return result


def _flop(mod) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # not every kernel can be analysed; its GFLOP/s is then unknown
        return 0.0


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
    from ..frontends.load import load_model, to_onnx
    from ..importer.relax import import_relax
    from ..targets import load_target

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
