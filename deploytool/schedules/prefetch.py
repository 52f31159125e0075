"""Software prefetch of the next channel tile's packed weights in register-tiled kernels.

A register-tiled kernel (see schedules.py) sweeps one channel tile's packed weight slice once per
row of output pixels. Only the first sweep reads the slice from memory; the later ones find it in
L2. In a whole model the weights are never in cache (ResNet-18 streams 47 MB of them per image),
so the first sweep of every tile waits on memory, and the layers with the largest weights ran up
to 50% slower than when timed alone. The hardware prefetcher only runs a few lines ahead. So each
sweep of tile c also prefetches its share of tile c + 1's slice: spread over all sweeps, the
weight stream overlaps the arithmetic.

The schedule marks the loop to prefetch in (``PREFETCH_LOOP``, whose value is the index, in the
update block's reads, of the packed weight); :func:`insert_prefetches` adds the prefetches after
the weights are packed, when the kernel reads the packed weight as a parameter.
"""

from __future__ import annotations

import math

PREFETCH_LOOP = "deploytool.prefetch_next_tile"
CACHE_LINE_BYTES = 64
MAX_PREFETCHES = 8  # per iteration of the marked loop; more means the slice is not worth it
# Measured on ResNet-18: slices swept 7 to 112 times ran up to 20% faster in a cold cache; those
# swept 392 and 1568 times (56x56 and 112x112 outputs) ran 25% and 2x slower.
MAX_SWEEPS = 128
LOCALITY = 3  # llvm.prefetch: into L1 (prefetcht0); L2 (2) measured no better


def insert_prefetches(mod):
    """Add the prefetches to every PrimFunc of ``mod`` that has a marked loop; others unchanged."""
    from tvm import tirx

    updates = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            new = _rewrite(func.body, [], func)
            if new is not None:
                updates[gv] = func.with_body(new)
    if not updates:
        return mod
    mod = mod.clone()
    for gv, func in updates.items():
        mod.update_func(gv, func)
    return mod


def _rewrite(stmt, loops: list, func):
    """``stmt`` with the marked loop's body preceded by its prefetches, or None if unchanged.
    ``loops`` are the enclosing For loops, outermost first."""
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.For):
        if PREFETCH_LOOP in stmt.annotations:
            prefetches = _prefetches(stmt, loops, func)
            if not prefetches:
                return None
            body = tirx.SeqStmt([*prefetches, stmt.body])
            annotations = {k: v for k, v in stmt.annotations.items() if k != PREFETCH_LOOP}
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                            stmt.thread_binding, annotations, stmt.step)
        body = _rewrite(stmt.body, [*loops, stmt], func)
        return None if body is None else tirx.For(
            stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
            stmt.annotations, stmt.step)
    if isinstance(stmt, tirx.SeqStmt):
        parts = [_rewrite(s, loops, func) for s in stmt.seq]
        if all(p is None for p in parts):
            return None
        return tirx.SeqStmt([s if p is None else p for s, p in zip(stmt.seq, parts, strict=True)])
    if isinstance(stmt, s_tir.SBlockRealize):
        block = _rewrite(stmt.block, loops, func)
        return None if block is None else s_tir.SBlockRealize(
            stmt.iter_values, stmt.predicate, block)
    if isinstance(stmt, s_tir.SBlock):
        body = _rewrite(stmt.body, loops, func)
        return None if body is None else s_tir.SBlock(
            stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, stmt.init,
            stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)
    return None


def _update_block(stmt):
    from tvm import s_tir, tirx

    while True:
        if isinstance(stmt, s_tir.SBlockRealize):
            return stmt.block
        if isinstance(stmt, tirx.For):
            stmt = stmt.body
        elif isinstance(stmt, tirx.SeqStmt) and len(stmt.seq) == 1:
            stmt = stmt.seq[0]
        else:
            return None


def _prefetches(marked, loops: list, func) -> list:
    """The prefetch statements for the marked loop, or [] when the kernel is not in the form
    the schedule writes (parallel tile loop, then serial reduction loops down to this one)."""
    from tvm import tirx

    block = _update_block(marked.body)
    parallel = [i for i, loop in enumerate(loops) if loop.kind == tirx.ForKind.PARALLEL]
    if block is None or len(parallel) != 1:
        return []
    weight = block.reads[int(marked.annotations[PREFETCH_LOOP])].source
    if not any(weight.same_as(p) for p in func.params):
        return []  # not packed at compile time: nothing to stream ahead of
    shape = [int(d) for d in weight.shape]
    tiles_loop = loops[parallel[0]]
    tiles, channel_tiles = int(tiles_loop.extent), shape[0]
    sweeps = tiles // channel_tiles  # sweeps of one channel tile's slice
    if not 2 <= sweeps <= MAX_SWEEPS or tiles % channel_tiles:
        return []
    reduction = [*loops[parallel[0] + 1:], marked]
    iterations, position = 1, 0
    for loop in reduction:
        iterations *= int(loop.extent)
        position = position * loop.extent + loop.loop_var  # row-major over the loops
    slice_size = math.prod(shape[1:])
    per_line = CACHE_LINE_BYTES * 8 // weight.dtype.bits
    lines = -(-slice_size // per_line)
    step = -(-lines // (sweeps * iterations))  # lines to prefetch per iteration
    if step > MAX_PREFETCHES:
        return []

    def const(value):
        return tirx.const(value, tiles_loop.loop_var.ty.dtype)

    # Iteration i of sweep s of tile c prefetches `step` lines of tile c + 1's slice, from line
    # (s * iterations + i) * step on, clamped to the slice's end (with `step` rounded up, the
    # first sweeps cover it all). Only multiplications and additions in the loop: the divisions
    # are of the parallel loop's variable, invariant inside it.
    sweep = tiles_loop.loop_var % const(sweeps)
    following = tirx.min(tiles_loop.loop_var // const(sweeps) + const(1), const(channel_tiles - 1))
    first = (sweep * const(iterations) + position) * const(step * per_line)
    flat = tirx.decl_buffer((channel_tiles * slice_size,), weight.dtype, "weight_flat",
                            data=weight.data)
    out = [tirx.DeclBuffer(flat, data=weight.data)]
    for k in range(step):
        offset = tirx.min(first + const(k * per_line), const(slice_size - 1))
        load = tirx.BufferLoad(flat, [following * const(slice_size) + offset])
        out.append(tirx.Evaluate(tirx.call_llvm_intrin(
            "void", "llvm.prefetch", tirx.address_of(load), tirx.const(0, "int32"),
            tirx.const(LOCALITY, "int32"), tirx.const(1, "int32"))))
    return out
