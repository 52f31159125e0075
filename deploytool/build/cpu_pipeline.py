"""The untuned (and tuned) CPU build: fuse, channels-last, schedule every kernel, pack weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..schedules.copies import schedule_concat, schedule_rows, schedule_transpose
from ..schedules.cpu import accumulator_lanes, packs_weights, schedule_kernel, schedule_pool
from ..schedules.dot_products import AMX_BF16, AMX_INT8, BF16, SDOT, VNNI, VNNI_8
from ..schedules.metaschedule import tuning_target
from ..schedules.prefetch import insert_prefetches
from ..schedules.products import grouped_lanes, schedule_dot_product, target_instructions
from ..schedules.reductions import schedule_reduction
from ..schedules.sampled import DEFAULT_SCHEDULE, sample_best_schedule
from ..targets import TargetSpec
from ..tuning.database import SEARCH_MARGIN, open_database, search_won
from ..tuning.settings import TuneSettings
from .amx_rewrites import flattened_rows
from .cpu_rewrites import rewrite_for_cpu
from .int8_rewrites import integer_products


def _cpu_pipeline():
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline


def fuse(mod, target):
    """Legalize and fuse ``mod`` as the build does, so that tuning tasks match build kernels.

    Kernels learn which of their arguments are constant weights (``layout_free_buffers``), whose
    layout their schedules may then change: the weights are packed at compile time (see
    :func:`pack_weights`).
    """
    import tvm
    from tvm import relax

    cpu = _cpu_pipeline()
    mod = rewrite_for_cpu(integer_products(mod, grouped_lanes(target))[0])  # int8's first
    amx = tuple(i.data for i in target_instructions(target) if i in (AMX_INT8, AMX_BF16))
    mod = flattened_rows(mod, amx) if amx else mod
    with target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target)
                                       + cpu.legalize_passes(target)
                                       + [relax.transform.AttachAttrLayoutFreeBuffers()])(mod)
    # Only convolutions and matrix products keep it: MetaSchedule's layout rewrite of other
    # kernels' constants (an LSTM's initial state) gave wrong numbers (error 0.026).
    for gv, func in prim_funcs(mod):
        if func.attrs is not None and "layout_free_buffers" in func.attrs \
                and not packs_weights(func):
            mod[gv] = func.without_attr("layout_free_buffers")
    return mod


def pack_weights(mod):
    """Move the weight-packing blocks of scheduled kernels (tuned ones and schedules.py's) into
    their own functions and run them on the constant weights now, at compile time."""
    import tvm
    from tvm import relax

    for gv, func in prim_funcs(mod):
        if not is_scheduled(func) and not has_blocks(func):  # the pass below needs a root block
            mod[gv] = with_root_block(func)
    return tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                     relax.transform.FoldConstant()])(mod)


def with_root_block(func):
    """``func`` with its body in a root block, as TVMScript and TE kernels have (TVM writes
    cumsum's kernel without one)."""
    from tvm import s_tir

    return func.with_body(s_tir.SBlockRealize([], True,
                                              s_tir.SBlock([], [], [], "root", func.body)))


def is_scheduled(func) -> bool:
    return bool(func.attrs is not None and "tirx.is_scheduled" in func.attrs
                and func.attrs["tirx.is_scheduled"])


def has_blocks(func) -> bool:
    """Whether a kernel is made of blocks (what schedules work on); TVM legalizes a few
    operators (cumsum, for one) into plain loops without any."""
    import tvm
    from tvm import s_tir

    try:
        s_tir.Schedule(tvm.IRModule({"main": func})).get_sblock("root")
    except s_tir.schedule.ScheduleError:
        return False
    return True


def prim_funcs(mod):
    import tvm

    return [(gv, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


@dataclass


class SchedulePlan:
    """How the kernels of one build were scheduled: from the database, or by default."""

    database: str | None
    tasks: int = 0
    from_database: int = 0
    hand_written: int = 0  # of the default ones: schedules/cpu.py's register-tiled ones
    reductions: int = 0  # of the default ones: schedules/reductions.py's
    concatenations: int = 0  # of the default ones: schedules/copies.py's
    transposes: int = 0  # of the default ones: schedules/copies.py's
    elementwise: int = 0  # of the default ones: schedules/copies.py's rows
    integer: int = 0  # of the default ones: VNNI, sdot or AMX tiles (dot_products.py, amx.py)
    bf16: int = 0  # of the default ones: vdpbf16ps or AMX tiles (dot_products.py, amx.py)
    amx: int = 0  # of the integer and bf16 ones: schedules/amx.py's AMX tiles
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
                f"default schedules ({self.hand_written} register-tiled, "
                + self._tiled(self.integer, "int8", "dot products")
                + self._tiled(self.bf16, "bf16", "vdpbf16ps")
                + f"{self.concatenations} "
                f"concatenations, {self.transposes} transposes, {self.elementwise} elementwise, "
                f"{self.reductions} "
                f"reductions{kept}), {self.unscheduled} "
                f"unscheduled")

    def _tiled(self, count: int, precision: str, fallback: str) -> str:
        """"N int8 with AMX (M with dot products), ": a build's products of one precision, AMX's
        tiles counted in ``amx``."""
        if not count:
            return ""
        rest = count - self.amx
        return (f"{count} {precision} with {'AMX' if self.amx else fallback}"
                + (f" ({rest} with {fallback})" if self.amx and rest > 0 else "") + ", ")

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
        plan.tasks = len(prim_funcs(mod))
        with tvm_target:
            if database is not None:
                unscheduled = dict(prim_funcs(mod))
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
                for gv, func in unscheduled.items():
                    if is_scheduled(mod[gv]) and not search_won(database, func):
                        mod[gv] = func  # scheduled below, by default
                        plan.kept_default += 1
            plan.from_database = sum(is_scheduled(f) for _, f in prim_funcs(mod))
            if default_schedules:
                lanes = accumulator_lanes(tvm_target)
                instructions = target_instructions(tvm_target)
                for gv, func in prim_funcs(mod):
                    if is_scheduled(func) or not has_blocks(func):
                        continue  # (a kernel written as plain loops is built as it is)
                    scheduled, instruction = schedule_dot_product(func, instructions)
                    plan.integer += instruction in (VNNI, VNNI_8, SDOT, AMX_INT8)
                    plan.bf16 += instruction in (BF16, AMX_BF16)
                    plan.amx += instruction in (AMX_BF16, AMX_INT8)
                    if scheduled is None:
                        scheduled = schedule_kernel(func, lanes)
                        plan.hand_written += scheduled is not None
                    if scheduled is None:
                        scheduled = schedule_pool(func)
                    if scheduled is None:
                        scheduled = schedule_concat(func, lanes)
                        plan.concatenations += scheduled is not None
                    if scheduled is None:
                        scheduled = schedule_transpose(func)
                        plan.transposes += scheduled is not None
                    if scheduled is None:
                        scheduled = schedule_rows(func, lanes)
                        plan.elementwise += scheduled is not None
                    if scheduled is None:
                        scheduled = schedule_reduction(func, lanes)
                        plan.reductions += scheduled is not None
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


def schedule_build(target: TargetSpec, settings: TuneSettings | None = None,
                   tuned=None):
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
