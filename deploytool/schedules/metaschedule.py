"""MetaSchedule, imported without its slow start, and the target it schedules for."""

from __future__ import annotations

from ..targets import TargetSpec


def import_tensor_intrin_quickly(worker: bool = False) -> None:
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


def meta_schedule():
    """Import MetaSchedule (after its tensor intrinsics, see import_tensor_intrin_quickly)."""
    import_tensor_intrin_quickly()
    from tvm.s_tir import meta_schedule

    return meta_schedule


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def tuning_target(target: TargetSpec):
    """The ``tvm.target.Target`` MetaSchedule needs: the build target plus ``num-cores`` (and,
    for llvm, the build's code generation flags, so that trials run as the build will)."""
    import tvm

    from ..build.lowering import codegen_target

    resolved = target.resolved()
    cores = resolved.target.get("num-cores") or (physical_cores() if resolved.runs_here() else 4)
    return codegen_target(tvm.target.Target({**resolved.target, "num-cores": int(cores)}))
