"""How trials are built and timed: local worker processes or boards over TVM RPC."""

from __future__ import annotations

import math
import os

from ..common import Log
from ..errors import DeploytoolError
from ..schedules.cpu import accumulator_lanes, pooled, register_tiled
from ..schedules.metaschedule import meta_schedule, physical_cores
from ..targets import TargetSpec
from .database import records_of
from .settings import TuneSettings

DEFAULT_TRIALS_PER_TASK = 64
TRIAL_RUNS = 10  # timed runs of a trial
# Trials of a model with more weights than this start each run with a flushed cache (see
# make_runner); a smaller model's weights stay in cache from one run to the next (2 x 2 MB of L2
# here).
COLD_WEIGHT_BYTES = 4 << 20


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


def by_value(function, *defaults):
    """A copy of ``function`` with no module, so that the pool pickles it by value: its workers
    may not be able to import this deploytool."""
    import types

    return types.FunctionType(function.__code__, {"__builtins__": __builtins__},
                              function.__name__, defaults or None)


def measure_register_tiled(extracted, database, builder, runner, tvm_target, log: Log) -> int:
    """Measure schedules.py's schedule of each kernel it knows (register-tiled, or pooling) and
    store it as a record.

    The search then starts from it (the evolutionary search seeds its population with the best
    records), and a build takes a searched schedule only where it beat this one by
    SEARCH_MARGIN. Kernels whose database already holds this very schedule (a resumed run) are
    skipped; one measured by an older deploytool, whose schedules differed, is measured again.
    Returns how many records were stored.
    """
    import shutil

    ms = meta_schedule()
    lanes, todo = accumulator_lanes(tvm_target), []
    for task in extracted:
        mod = task.dispatched[0]
        sch = register_tiled(mod, lanes)
        if sch is None:
            sch = pooled(mod)
        if sch is None or any(str(r.trace) == str(sch.trace) for r in records_of(database, mod)):
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
    if stored:
        log(f"measured the default schedule (register-tiled or pooling) of {stored} kernel(s); "
            "the search starts from it")
    if stored < len(todo):
        log(f"the default schedule of {len(todo) - stored} kernel(s) failed to build or run as "
            "a trial; their searched records are taken without the margin")
    return stored


def build_trial(mod, target, _params):
    """MetaSchedule's default build of a trial, plus what a package build adds (weight
    prefetches, scratch buffers on the stack), so that a record is measured as it will run."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from deploytool.build.lowering import tir_pipeline
    from deploytool.schedules.prefetch import insert_prefetches

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(insert_prefetches(mod), target=target, pipeline=tir_pipeline())


def exporter(cxx: str):
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
    ms = meta_schedule()
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
                                   f_run_evaluator=by_value(_fastest_run),
                                   initializer=by_value(_ignore_sigint))
    if settings.rpc:
        host, port = _host_port(settings.rpc, "--rpc")

        def connect_server(_config):  # pickled by value into the runner's worker
            from tvm import rpc

            return rpc.connect(host, port, session_timeout=30)

        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                     session_timeout_sec=30)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                   f_create_session=connect_server,
                                   f_run_evaluator=by_value(_fastest_run),
                                   initializer=by_value(_ignore_sigint))
    if not target.runs_here():
        raise DeploytoolError(
            f"this machine cannot measure kernels built for {target.name} ({target.arch})",
            "Tune on the board over TVM RPC: --rpc-tracker HOST:PORT --rpc-key KEY, or "
            "--rpc HOST:PORT")
    return ms.runner.LocalRunner(timeout_sec=30, evaluator_config=evaluator,
                                 f_run_evaluator=by_value(_fastest_run),
                                 initializer=by_value(_local_runner_setup,
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
