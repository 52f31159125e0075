"""Schedules sampled from MetaSchedule's design space, for kernels no hand-written one covers."""

from __future__ import annotations

import math

from .cpu import SCHEDULE_NAME
from .metaschedule import meta_schedule

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


def sample_default_schedule(func, target, seed: int = DEFAULT_SCHEDULE_SEED):
    """Schedule one kernel with a sample of MetaSchedule's design space for ``target``.

    Returns the scheduled PrimFunc, or None when no schedule applies (the kernel then stays as
    TVM lowers it).
    """
    import tvm

    ms = meta_schedule()
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


def _top_level_blocks(sch) -> list:
    """The kernel's top-level blocks; none for a kernel written without blocks."""
    from tvm.s_tir.schedule import ScheduleError

    try:
        return list(sch.get_child_blocks(sch.get_sblock("root")))
    except ScheduleError:
        return []


def _score(func) -> tuple[int, int]:
    """How promising a sampled schedule looks, without running it: the vector width of its
    reduction loops' innermost loop, then the size of their innermost (register) tile."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    vector, tile = 1 << 30, 1 << 30
    found = False
    for block in _top_level_blocks(sch):
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
