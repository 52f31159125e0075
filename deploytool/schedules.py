"""Hand-written CPU schedules for convolutions and matrix products, with pre-packed weights."""

from __future__ import annotations

# Blocks TVM's legalization names, channels-last (see tuning.CONV2D_LAYOUT), that these schedules
# know: spatial loops ..., W (or M), C (or N), then the reduction loops.
KNOWN_BLOCKS = ("conv2d_nhwc", "group_conv2d_nhwc", "matmul")
# Accumulators of one register tile, in float lanes: 16 of the 32 AVX-512 registers (AVX2
# targets spill some; their LLVM still vectorizes the tile).
TILE_LANES = 256
# Widths of the vector tile over output channels, best first (16 lanes make an AVX-512 vector).
CHANNEL_TILES = (32, 16, 64, 8, 128)
MIN_PIXELS = 4
REDUCTION_UNROLL = 4
DATA_PARALLEL = 0  # tirx IterVar.iter_type of a spatial loop
VECTOR_LANES = (64, 32, 16, 8)  # how a padding loop over channels may be vectorized

SCHEDULE_NAME = "deploytool-register-tiled"


def schedule_kernel(func):
    """Schedule one fused kernel whose main block is a channels-last convolution or a matrix
    product (see :func:`register_tiled`).

    Returns the scheduled PrimFunc, or None when the kernel is not one it knows (or its shapes
    are not static), leaving it to the other default schedules.
    """
    import tvm

    sch = register_tiled(tvm.IRModule({"main": func}))
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)


def packs_weights(func) -> bool:
    """Whether the kernel's main block is one whose constant weights are worth packing."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    return any(sch.get(b).name_hint in KNOWN_BLOCKS
               for b in sch.get_child_blocks(sch.get_sblock("root")))


def register_tiled(mod):
    """The register-tiled schedule of ``mod["main"]``: a tile of output pixels (or rows) by
    output channels, accumulated in vector registers with one broadcast and one fused
    multiply-add per input element; or None when the kernel is not one it knows.

    The weight, when the kernel's caller passes a constant (``layout_free_buffers``, see
    ``relax.transform.AttachAttrLayoutFreeBuffers``), is pre-packed so that the channels of one
    tile are contiguous: ``HWIO -> (O/t)HWI(t)`` for convolutions, ``KN -> (N/t)K(t)`` for matrix
    products. The packing block is marked for ``relax.transform.SplitLayoutRewritePreproc``,
    which moves it out of the kernel, where FoldConstant packs the weights at compile time.

    Returns
    -------
    tvm.s_tir.Schedule or None
        A traced schedule, so that its trace can be stored as a tuning record.
    """
    from tvm import s_tir

    func = mod["main"]
    sch = s_tir.Schedule(mod)
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    main = next((n for n in KNOWN_BLOCKS if n in names), None)
    if main is None:
        return None
    try:
        _tile(sch, func, names, main)
    except Exception:  # a form these schedules do not cover (tests check the forms they do)
        return None
    return sch


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)  # TypeError for a symbolic extent


def _tile_sizes(channels: int, width: int) -> tuple[int, int]:
    """(output pixels or rows, output channels) of the register tile: two vectors of channels
    by up to 8 pixels where they divide (measured on ResNet-18, this beat 4x64, 2x128 and 14x16
    where those differed), wider channel tiles for a matrix-vector product (one row)."""
    options = [c for c in CHANNEL_TILES if channels % c == 0]
    if not options:
        raise ValueError(f"{channels} channels do not split into vectors")
    if width < MIN_PIXELS:
        options.sort(reverse=True)
    for channel in options:
        pixels = max(d for d in range(1, TILE_LANES // channel + 1) if width % d == 0)
        if pixels >= min(width, MIN_PIXELS):
            return pixels, channel
    channel = options[0]
    return max(d for d in range(1, TILE_LANES // channel + 1) if width % d == 0), channel


def _tile(sch, func, names: list[str], main: str) -> None:
    block = sch.get_sblock(main)
    iter_vars = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    spatial = sum(1 for v in iter_vars if int(v.iter_type) == DATA_PARALLEL)
    if (spatial < 2 or len(loops) != len(iter_vars)
            or any(int(v.iter_type) != DATA_PARALLEL for v in iter_vars[:spatial])):
        raise ValueError("not spatial loops then reduction loops")
    outer, (width, channels), reduction = loops[:spatial - 2], loops[spatial - 2:spatial], \
        loops[spatial:]
    pixels, channel = _tile_sizes(_extent(sch, channels), _extent(sch, width))

    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    epilogue = names[names.index(main) + 1:]
    for name in epilogue:  # bias, residual add, activation: into the last one, per tile
        if name not in outputs:
            sch.compute_inline(sch.get_sblock(name))

    channel_outer, channel_inner = sch.split(channels, [None, channel])
    width_outer, width_inner = sch.split(width, [None, pixels])
    innermost, first_reduction = reduction[-1], reduction[0]
    unrolled = []
    if _extent(sch, innermost) % REDUCTION_UNROLL == 0 and _extent(sch, innermost) > 1:
        innermost, unrolled = sch.split(innermost, [None, REDUCTION_UNROLL])
        unrolled = [unrolled]
        if len(reduction) == 1:
            first_reduction = innermost
    # Channel tiles outermost: each thread keeps one packed weight slice hot while it sweeps
    # the rows.
    sch.reorder(channel_outer, *outer, width_outer, *reduction[:-1], innermost, *unrolled,
                width_inner, channel_inner)
    if epilogue:
        last = sch.get_sblock(epilogue[-1])
        sch.reverse_compute_at(last, width_outer)
        sch.vectorize(sch.get_loops(last)[-1])
    tiles = sch.fuse(channel_outer, *outer, width_outer)
    sch.parallel(tiles)
    for loop in unrolled:
        sch.unroll(loop)
    sch.unroll(width_inner)
    sch.vectorize(channel_inner)
    init = sch.decompose_reduction(block, first_reduction)
    sch.vectorize(sch.get_loops(init)[-1])
    if "pad_temp" in names:
        pad = sch.get_sblock("pad_temp")
        if main == "group_conv2d_nhwc":
            # Padding the whole input first costs a pass over memory as long as the (depthwise)
            # convolution itself; padded per tile, the rows it needs stay in cache.
            sch.compute_at(pad, tiles)
            loops = sch.get_loops(pad)
            lanes = next((v for v in VECTOR_LANES if _extent(sch, loops[-1]) % v == 0), None)
            if lanes is not None:
                sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
        else:
            _vectorize_copy(sch, pad)
    # Packing comes last, as the postprocessing part of the trace: a tuning search that starts
    # from this schedule replays it without that part and packs in its own way (replayed with
    # it, MetaSchedule's own layout rewrite failed on the already packed weight).
    sch.enter_postproc()
    _pack_weight(sch, func, block, iter_vars[spatial - 1].var, channel)


def _pack_weight(sch, func, block, channel_var, channel: int) -> None:
    """Pre-pack the block's constant weight, indexed by output channel last, so that each
    tile's channels are contiguous."""
    import tvm

    attrs = func.attrs
    if attrs is None or "layout_free_buffers" not in attrs:
        return
    free = {func.params[int(i)].name for i in attrs["layout_free_buffers"]}
    reads = [i for i, region in enumerate(sch.get(block).reads)
             if region.source.name in free and len(region.region) >= 2
             and region.region[-1].min.same_as(channel_var)]
    if not reads:
        return
    packed = sch.cache_read(block, reads[0], "global")

    rank = len(sch.get(block).reads[reads[0]].region)
    # A map of fixed arity: a variadic one replays wrongly from a tuning record's trace.
    index_map = tvm.tirx.IndexMap.from_func(
        lambda *axes: (axes[-1] // channel, *axes[:-1], axes[-1] % channel), ndim=rank)
    sch.transform_layout(packed, ("write", 0), index_map)
    sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", True)


def _vectorize_copy(sch, block) -> None:
    """Parallel over the rows, vectorized over the channels (the zero padding of a convolution's
    input: scalar, it cost more than the depthwise convolution it feeds)."""
    loops = sch.get_loops(block)
    lanes = next((v for v in VECTOR_LANES if _extent(sch, loops[-1]) % v == 0), None)
    if lanes is not None:
        _, vector = sch.split(loops[-1], [None, lanes])
        sch.vectorize(vector)
    if len(loops) > 2:
        sch.parallel(sch.fuse(*loops[:-2]))
