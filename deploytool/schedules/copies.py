"""Default schedules for concatenations, alone or followed by elementwise operations."""

from __future__ import annotations

import itertools
import math

from .cpu import TILE_LANES, _vector_floats

# A concatenation split into more pieces than this keeps MetaSchedule's schedule: each piece
# is a loop of its own in the generated code.
MAX_PIECES = 64


def _boundaries(value) -> tuple[object, list[int]] | None:
    """The concatenated axis variable and the offsets where inputs start, read from TOPI's
    ``if_then_else(offset <= v, next input, earlier inputs)`` chain; None for other values."""
    import tvm
    from tvm.ir.prim import expr as prim

    select = tvm.ir.Op.get("prim.if_then_else")
    axis, offsets = None, []
    while isinstance(value, tvm.ir.expr.Call) and value.op.same_as(select):
        condition = value.args[0]
        if not (isinstance(condition, prim.LE) and isinstance(condition.a, prim.IntImm)
                and isinstance(condition.b, tvm.tirx.Var)):
            return None
        if axis is not None and not condition.b.same_as(axis):
            return None
        axis = condition.b
        offsets.append(int(condition.a.value))
        value = value.args[2]
    return (axis, sorted(offsets)) if axis is not None else None


def _find_concat(value):
    """_boundaries of the first TOPI concatenation inside ``value``, an elementwise expression
    (a concatenation followed by a batch norm and a ReLU, say); None when there is none."""
    import tvm

    found = _boundaries(value)
    if found is not None:
        return found
    if isinstance(value, tvm.ir.expr.Call):
        children = list(value.args)
    else:
        children = [getattr(value, name) for name in ("a", "b", "value", "true_value",
                                                      "false_value")
                    if isinstance(getattr(value, name, None), tvm.ir.expr.Expr)]
    return next((found for child in children if (found := _find_concat(child)) is not None),
                None)


def concatenated(mod, lanes: int = TILE_LANES):
    """The schedule of a concatenation kernel (``mod["main"]``: TOPI's ``T_concat`` block,
    possibly followed by elementwise blocks, inlined into one), or None when it is not one.

    The concatenated axis is split at the gcd of the inputs' sizes along it and the pieces are
    partitioned into loops of their own, so that each copies one input without TVM's
    per-element ``if_then_else``; the innermost axis is vectorized. MetaSchedule's schedule
    kept the select per element: SqueezeNet's 15x15x(64+64) concatenation took 7 us, this one
    1.4 us.
    """
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    try:
        *inner, block = sch.get_child_blocks(sch.get_sblock("root"))
        for producer in inner:
            sch.compute_inline(producer)
    except (ValueError, s_tir.schedule.ScheduleError):
        return None
    found = _find_concat(getattr(sch.get(block).body, "value", None))
    if found is None:
        return None
    axis_var, offsets = found
    iter_vars = [iv.var for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    if len(loops) != len(iter_vars):
        return None
    axis = next((i for i, v in enumerate(iter_vars) if v.same_as(axis_var)), None)
    if axis is None:
        return None
    try:
        extents = [int(sch.get(loop).extent) for loop in loops]
    except TypeError:  # a symbolic shape
        return None
    edges = [0, *offsets, extents[axis]]
    piece = math.gcd(*(end - start for start, end in itertools.pairwise(edges)))
    if extents[axis] // piece > MAX_PIECES:
        return None
    outer = sch.fuse(*loops[:axis]) if axis else None
    pieces, _ = sch.split(sch.get_loops(block)[1 if axis else 0], [None, piece])
    _vectorize_innermost(sch, sch.get_loops(block)[-1], _vector_floats(lanes))
    if outer is not None:  # (small copies then run on one thread: build/lowering.py)
        sch.parallel(outer)
    if extents[axis] // piece > 1:
        sch.loop_partition(pieces, [1] * (extents[axis] // piece - 1) + [None])
    return sch


def _vectorize_innermost(sch, loop, floats: int) -> None:
    extent = int(sch.get(loop).extent)
    vector = next((v for v in (floats, 8, 4) if extent % v == 0), None)
    if vector is None:
        return
    if extent > vector:
        _, loop = sch.split(loop, [None, vector])
    sch.vectorize(loop)


def schedule_concat(func, lanes: int = TILE_LANES):
    """:func:`concatenated` for one kernel: the scheduled PrimFunc, or None."""
    import tvm

    sch = concatenated(tvm.IRModule({"main": func}), lanes)
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)
