"""Hand-written CPU schedules for reductions: means over pixels (global pooling, squeeze-and-excite)
and kernels that work row by row (softmax, layer norm)."""

from __future__ import annotations

import math

from .cpu import (
    DATA_PARALLEL,
    TILE_LANES,
    _block_names,
    _extent,
    _vector_floats,
    _vectorize_tile_channels,
)

COMMUTATIVE_REDUCE = 2  # tirx IterVar.iter_type of a reduction loop
# Channel tiles of a mean over pixels: up to this many vectors (accumulators), while the tiles
# stay at least MIN_TILES for the threads to share.
MEAN_VECTORS = 4
MIN_TILES = 8
# Vectors per iteration of a row's elementwise loop, where they divide it (layer norm over
# 197x256: 9.2 us with one, 8.5 with four)
ROW_VECTORS = 4


def schedule_reduction(func, lanes: int = TILE_LANES):
    """:func:`pixel_mean` or else :func:`row_wise` for one kernel: the scheduled PrimFunc, or
    None when it is neither."""
    import tvm

    for schedule in (pixel_mean, row_wise):
        sch = schedule(tvm.IRModule({"main": func}), lanes)
        if sch is not None:
            return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return None


def pixel_mean(mod, lanes: int = TILE_LANES):
    """The schedule of a channels-last reduction over pixels (``mod["main"]``: a mean or sum
    over H and W, then optionally elementwise blocks, such as the division of a mean), or None
    when it is not one.

    Tiles of up to MEAN_VECTORS vectors of channels, shared by the threads, each sweeping all
    pixels and adding one vector per pixel and tile in registers; the elementwise blocks follow
    per tile. MetaSchedule's sampled schedules reduced one channel at a time with the pixels
    innermost (a stride of the row per add): EfficientNet-B0's mean over 112x112x32 took 373 us
    on one Zen 4 core.

    Returns
    -------
    tvm.s_tir.Schedule or None
    """
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    names = _block_names(sch)
    if not names:
        return None
    try:
        block = sch.get_sblock(names[0])
        iter_vars = sch.get(block).iter_vars
        kinds = [int(v.iter_type) for v in iter_vars]
        spatial = kinds.count(DATA_PARALLEL)
        if not 0 < spatial < len(kinds) or any(k != DATA_PARALLEL for k in kinds[:spatial]):
            return None  # not spatial loops, then reduction loops
        channel_var = iter_vars[spatial - 1].var
        reads = sch.get(block).reads
        if not reads or not all(r.region[-1].min.same_as(channel_var) for r in reads
                                if r.source.name != sch.get(block).writes[0].source.name):
            return None  # the input's last axis is not the output's channels
        if not _elementwise_after(sch, names):
            return None
        loops = sch.get_loops(block)
        *outer, channels = loops[:spatial]
        reduction = loops[spatial:]
        count = _extent(sch, channels)
        vector = next((v for v in (_vector_floats(lanes), 8, 4) if count % v == 0), None)
        if vector is None:
            return None
        vectors = max((k for k in range(1, MEAN_VECTORS + 1)
                       if count % (vector * k) == 0 and count // (vector * k) >= MIN_TILES),
                      default=1)
        tile, inner = sch.split(channels, [None, vector * vectors])
        sch.reorder(*outer, tile, *reduction, inner)
        tiles = sch.fuse(*outer, tile)
        sch.parallel(tiles)
        _vectorize_tile_channels(sch, inner)
        init = sch.decompose_reduction(block, reduction[0])
        sch.vectorize(sch.get_loops(init)[-1])
        for name in names[1:]:
            after = sch.get_sblock(name)
            sch.reverse_compute_at(after, tiles)
            _vectorize_tile_channels(sch, sch.get_loops(after)[-1])
    except Exception:  # a form this schedule does not cover (tests check the ones it does)
        return None
    return sch


def _elementwise_after(sch, names: list[str]) -> bool:
    """Whether every block after the first is elementwise (no reduction loops)."""
    return all(all(int(v.iter_type) == DATA_PARALLEL for v in sch.get(sch.get_sblock(n)).iter_vars)
               for n in names[1:])


def row_wise(mod, lanes: int = TILE_LANES):
    """The schedule of a kernel that works row by row (``mod["main"]``: softmax, layer norm,
    and the like: reductions over the last axis and elementwise blocks, each row independent of
    the others), or None when it is not one.

    Rows are shared by the threads; each row's blocks run one after another on it, so that its
    intermediate values stay in cache (scratch of one row, on the stack: see lowering.py). The
    elementwise blocks are vectorized along the row, with the last, partial vector on its own;
    sums are left to LLVM, which vectorizes them (with several accumulators) under the build's
    fast-math-reassoc flag (see lowering.CODEGEN_FLAGS), maxima and minima are computed in
    vectors (see _vector_extremum). MetaSchedule's sampled
    schedule of a ViT's softmax over 4x197x197 took 1.6 ms on one Zen 4 core, this one 0.13 ms.

    Returns
    -------
    tvm.s_tir.Schedule or None
    """
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    names = _block_names(sch)
    if len(names) < 2 or not any(_reduces(sch, n) for n in names):
        return None
    try:
        output = sch.get_sblock(names[-1])
        if _reduces(sch, names[-1]):
            return None
        rank = len(sch.get(output).iter_vars)
        row = [DATA_PARALLEL] * (rank - 1)
        for name in names[:-1]:  # elementwise, a value per row, or a row reduced to one value
            kinds = [int(v.iter_type) for v in sch.get(sch.get_sblock(name)).iter_vars]
            if kinds not in (row + [DATA_PARALLEL], row, row + [COMMUTATIVE_REDUCE]):
                return None
        for name in names[:-1]:  # a value per row, such as a mean: computed where it is read
            if not _reduces(sch, name) and len(sch.get(sch.get_sblock(name)).iter_vars) < rank:
                sch.compute_inline(sch.get_sblock(name))
        names = _block_names(sch)
        *rows, _ = sch.get_loops(output)
        if not rows or math.prod(_extent(sch, loop) for loop in rows) < 2:
            return None
        fused = sch.fuse(*rows)
        sch.parallel(fused)
        for name in reversed(names[:-1]):
            sch.compute_at(sch.get_sblock(name), fused)
        vector = _vector_floats(lanes)
        for name in names:
            block = sch.get_sblock(name)
            loops = sch.get_loops(block)
            if len(loops) < 2:
                continue
            if _extremum(sch, name) and _extent(sch, loops[-1]) >= 2 * vector:
                _vector_extremum(sch, block, loops[-1], vector)
            elif _reduces(sch, name):
                # its initial value set before the loop: a branch in it kept LLVM from
                # vectorizing it (layer norm over 197x256, 12 -> 7 us)
                sch.decompose_reduction(block, loops[1])
            else:
                count = _extent(sch, loops[-1])
                _vectorize_row(sch, loops[-1], vector * ROW_VECTORS
                               if count % (vector * ROW_VECTORS) == 0 else vector)
    except Exception:  # a form this schedule does not cover (tests check the ones it does)
        return None
    return sch


def _extremum(sch, name: str) -> bool:
    """Whether the block reduces by max or min."""
    from tvm import tirx

    value = getattr(sch.get(sch.get_sblock(name)).body, "value", None)
    return _reduces(sch, name) and isinstance(value, (tirx.Max, tirx.Min))


def _vector_extremum(sch, block, loop, vector: int) -> None:
    """A row's max (or min) in ``vector`` partial results, one per lane, then across the lanes:
    LLVM vectorizes a max reduction only under no-NaN math, which the builds do not allow
    (lowering.CODEGEN_FLAGS), and left a chain of scalar maxima, one element at a time. The
    partial results take a loop over the rows of their own (TVM's compute-at of a block with a
    predicate drops the predicate). A ViT's softmax over 4x197x197: 57 -> 22 us on 2 threads."""
    count = _extent(sch, loop)
    spatial = sum(int(v.iter_type) == DATA_PARALLEL for v in sch.get(block).iter_vars)
    _, lanes = sch.split(loop, [None, vector])
    partial = sch.rfactor(lanes, spatial)  # partial results contiguous, along the last axis
    sch.vectorize(sch.get_loops(partial)[-1])
    sch.decompose_reduction(partial, sch.get_loops(partial)[1])
    if count % vector:  # the last, partial vector in a loop of its own
        sch.loop_partition(sch.get_loops(partial)[1], [count // vector, None])
    sch.decompose_reduction(block, sch.get_loops(block)[1])


def _reduces(sch, name: str) -> bool:
    return any(int(v.iter_type) != DATA_PARALLEL for v in sch.get(sch.get_sblock(name)).iter_vars)


def _vectorize_row(sch, loop, vector: int) -> None:
    """Vectorize ``loop`` in vectors of ``vector`` floats, the last, partial one (a vector
    predicated element by element) in a loop of its own."""
    count = _extent(sch, loop)
    if count < vector:
        return
    outer, inner = sch.split(loop, [None, vector])
    sch.vectorize(inner)
    if count % vector:
        sch.loop_partition(outer, [count // vector, None])
