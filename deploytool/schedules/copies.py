"""Default schedules for copies: concatenations, transposes and elementwise kernels (casts,
quantizes: a copy with arithmetic), alone or with elementwise operations fused."""

from __future__ import annotations

import itertools
import math

from .cpu import DATA_PARALLEL, TILE_LANES, _vector_floats

# A concatenation split into more pieces than this keeps MetaSchedule's schedule: each piece
# is a loop of its own in the generated code.
MAX_PIECES = 64
# A transpose's tiles span one cache line of the source along its rows (see transposed).
CACHE_LINE_BYTES = 64
# An elementwise kernel's rows of fewer elements than this (one AVX2 vector of floats) are left
# to MetaSchedule (see in_rows).
MIN_ROW = 8


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
    _vectorize_innermost(sch, sch.get_loops(block)[-1], (_vector_floats(lanes), 8, 4))
    if outer is not None:  # (small copies then run on one thread: build/lowering.py)
        sch.parallel(outer)
    if extents[axis] // piece > 1:
        sch.loop_partition(pieces, [1] * (extents[axis] // piece - 1) + [None])
    return sch


def _vectorize_innermost(sch, loop, vectors: tuple[int, ...]) -> None:
    """Vectorize ``loop`` in pieces of the first of ``vectors`` that divides it (whole where
    it is that long); leave it to LLVM where none does."""
    extent = int(sch.get(loop).extent)
    vector = next((v for v in vectors if extent % v == 0), None)
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


def transposed(mod):
    """The schedule of a transpose that moves the innermost axis (``mod["main"]``: a kernel of
    spatial blocks only, inlined into one, whose largest input is read in another order than
    row-major, such as a reshape and transpose of attention heads), or None for another kernel.

    The copy goes in tiles of a cache line of source rows (see _tiles). MetaSchedule's schedule
    fused every axis into one vectorized loop, each lane recovering its indices by division: a
    ViT's key transpose (197 tokens, 4 heads of 64) took 27 us that way, 7 us in tiles. Where
    rows of the source stay rows of the output (a transpose of outer axes), MetaSchedule's
    vectors of whole rows are kept: rows split into vectors, with a quantize fused after, took
    BERT's int8 heads 9.9 us against 1.7 us (docs/internals/cpu-schedules.md).
    """
    found = _spatial(mod)
    if found is None:
        return None
    sch, block, loops, extents = found
    strides = _source_strides(sch.get(block), [v.var for v in sch.get(block).iter_vars])
    if strides is None or not _reordered(strides, extents) or strides[-1] == 1:
        return None  # (rows of the source stay rows: MetaSchedule's vectors of them are as fast)
    contiguous = [i for i, (s, n) in enumerate(zip(strides, extents, strict=True))
                  if s == 1 and n > 1]
    if not contiguous:
        return None
    line = CACHE_LINE_BYTES * 8 // max(8, _dtype_bits(sch.get(block)))
    return _tiles(sch, loops, extents, contiguous[-1], line)


def _spatial(mod):
    """The schedule of a kernel of spatial blocks only, inlined into one, with that block, its
    loops and their extents; None for another kernel (a reduction, a symbolic shape)."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    try:
        *inner, block = sch.get_child_blocks(sch.get_sblock("root"))
        for producer in inner:
            sch.compute_inline(producer)
        iter_vars = sch.get(block).iter_vars
        loops = sch.get_loops(block)
        if len(loops) != len(iter_vars) or any(int(v.iter_type) != DATA_PARALLEL
                                               for v in iter_vars):
            return None
        extents = [int(sch.get(loop).extent) for loop in loops]
    except (ValueError, TypeError, s_tir.schedule.ScheduleError):  # not a static copy
        return None
    return sch, block, loops, extents


def in_rows(mod, lanes: int = TILE_LANES):
    """The schedule of an elementwise kernel (``mod["main"]``: spatial blocks only, inlined
    into one, every input read in the output's order, a cast or a quantize say), or None for
    another kernel: the threads share the output's outermost axis, each row is written in
    vectors.

    MetaSchedule's schedule fused every axis into one vector loop of 64 lanes, each lane
    recovering its indices by division and gathering its element where a row is not a
    multiple of 64: a bf16 cast of MobileNetV2's 56x56x24 residual took 40 us that way, 3.6
    us by rows. Rows shorter than MIN_ROW elements, and a single row, stay with MetaSchedule.
    """
    found = _spatial(mod)
    if found is None:
        return None
    sch, block, loops, extents = found
    if math.prod(extents[:-1]) < 2 or extents[-1] < MIN_ROW \
            or not _elementwise(sch.get(block), extents):
        return None  # (one row: MetaSchedule's vector loop has no division to do)
    # the threads share the outermost axis of more than one element; the others stay loops of
    # their own, so that no index is recovered by division
    outer = next(loop for loop, n in zip(loops, extents, strict=True) if n > 1)
    sch.parallel(outer)  # (small kernels then run on one thread: lowering.py)
    # vectors of two registers where they divide the row: in 16-float pieces, a quantize's
    # rounding came out of LLVM as gathers (a ViT's 3x17x64 weights 1.8 us, 0.07 us in 32s)
    floats = _vector_floats(lanes)
    _vectorize_innermost(sch, loops[-1], (2 * floats, floats, 8, 4))
    return sch


def _dtype_bits(block) -> int:
    return max(region.source.dtype.bits for region in block.reads)


def _source_strides(block, variables) -> list[int] | None:
    """How far apart, in elements of the largest buffer the block reads, two elements of the
    output along each axis are read (0 for an axis the read does not follow); None when the
    block reads nothing of two or more axes."""
    reads = _element_reads(block)
    if not reads:
        return None
    try:
        source = max(reads, key=lambda r: math.prod(int(d) for d in r.source.shape))
        return _strides(_offset(source, variables), len(variables))
    except TypeError:  # a symbolic shape or index
        return None


def _element_reads(block) -> list | None:
    """The block's reads of two or more axes, each of one element; None when one reads a
    range (not an element per output element)."""
    reads = [r for r in block.reads if len(r.region) >= 2]
    try:
        if any(int(axis.extent) != 1 for r in reads for axis in r.region):
            return None
    except TypeError:  # a symbolic extent
        return None
    return reads


def _offset(read, variables):
    """The function of an output element's indices giving the offset, in elements of its
    buffer, of what ``read`` reads."""
    from tvm.sym import Analyzer

    shape = [int(d) for d in read.source.shape]

    def offset(point: list[int]) -> int:
        analyzer = Analyzer()
        for var, value in zip(variables, point, strict=True):
            analyzer.bind(var, value)
        index = [int(analyzer.simplify(r.min)) for r in read.region]
        return sum(i * math.prod(shape[k + 1:]) for k, i in enumerate(index))

    return offset


def _strides(offset, axes: int) -> list[int]:
    origin = offset([0] * axes)
    return [offset([int(k == axis) for k in range(axes)]) - origin for axis in range(axes)]


def _elementwise(block, extents: list[int]) -> bool:
    """Whether every input is read in the output's order, element by element or broadcast:
    each axis steps through it at one stride over its whole extent (not so where a reshape
    fused before the kernel splits an output axis: BERT's heads merged back into 256
    channels read 4 runs of 64), in row-major order, the innermost axis contiguous."""
    variables = [v.var for v in block.iter_vars]
    reads = _element_reads(block)
    if not reads:
        return False
    try:
        for read in reads:
            offset = _offset(read, variables)
            strides = _strides(offset, len(variables))
            if _reordered(strides, extents) or strides[-1] not in (0, 1) \
                    or not _linear(offset, strides, extents):
                return False
    except TypeError:  # a symbolic shape or index
        return False
    return True


def _linear(offset, strides: list[int], extents: list[int]) -> bool:
    """Whether ``offset`` moves by its stride at every step along each axis: its last element
    along the axis lies (extent - 1) strides from the first."""
    origin = offset([0] * len(extents))
    return all(offset([(n - 1) * (k == axis) for k in range(len(extents))]) - origin
               == (n - 1) * stride
               for axis, (n, stride) in enumerate(zip(extents, strides, strict=True)))


def _reordered(strides: list[int], extents: list[int]) -> bool:
    """Whether the output's axes walk the source in another order than its own."""
    moving = [s for s, n in zip(strides, extents, strict=True) if s and n > 1]
    return any(a < b for a, b in itertools.pairwise(moving))


def _tiles(sch, loops, extents, source_axis: int, line: int):
    """Tiles of ``line`` elements along the source's rows (output axis ``source_axis``) by
    ``line`` output rows. Output rows of whole vectors are written as vectors, each element
    gathered from a source row; other tiles read each source row's line in turn, unrolled.
    Output rows shorter than a line (a channels-first image made channels-last) are written
    pixel by pixel, unrolled: an RGB image at 224x224 took 4 us that way, 16 us in tiles; its
    int8 form (quantized, padded to 4 channels and 226x226) 7 us, 85 us with a thread per
    pixel."""
    *others, last = range(len(loops))
    if extents[last] < line:  # the threads share rows of pixels, each swept in order
        sch.parallel(sch.fuse(*(loops[:-2] or loops[:1])))
        sch.unroll(loops[-1])
        return sch
    others.remove(source_axis)
    source_outer, source_inner = sch.split(loops[source_axis],
                                           [None, min(line, extents[source_axis])])
    last_outer, last_inner = sch.split(loops[last], [None, line])
    vectors = extents[last] % line == 0
    sch.reorder(*(loops[k] for k in others), source_outer, last_outer,
                *((source_inner, last_inner) if vectors else (last_inner, source_inner)))
    sch.parallel(sch.fuse(*(loops[k] for k in others), source_outer, last_outer))
    if vectors:
        sch.vectorize(last_inner)
    else:
        sch.unroll(source_inner)
    return sch


def schedule_rows(func, lanes: int = TILE_LANES):
    """:func:`in_rows` for one kernel: the scheduled PrimFunc, or None."""
    import tvm

    sch = in_rows(tvm.IRModule({"main": func}), lanes)
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_transpose(func):
    """:func:`transposed` for one kernel: the scheduled PrimFunc, or None."""
    import tvm

    sch = transposed(tvm.IRModule({"main": func}))
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)
