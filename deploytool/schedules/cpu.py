"""Hand-written CPU schedules for convolutions and matrix products, with pre-packed weights."""

from __future__ import annotations

import math

from .prefetch import PREFETCH_LOOP

# Blocks TVM's legalization names, channels-last (see build.cpu_rewrites.CONV2D_LAYOUT), that
# these schedules know: spatial loops ..., W (or M), C (or N), then the reduction loops.
KNOWN_BLOCKS = ("conv2d_nhwc", "group_conv2d_nhwc", "matmul")
# Accumulators of one register tile, in float lanes: 16 of the 32 AVX-512 registers; 12 of the
# 16 AVX2 ones, 24 of the 32 NEON ones elsewhere (see accumulator_lanes).
TILE_LANES = 256
NARROW_TILE_LANES = 96
# Widths of the vector tile over output channels, best first (16 lanes make an AVX-512 vector).
CHANNEL_TILES = (32, 16, 64, 8, 128)
# On narrow registers, also three vectors: MobileNetV2's 24-channel outputs then take 4x24 tiles
# (12 accumulators) instead of 8x8 ones (8 accumulators, a broadcast per multiply-add); its
# 1x1 convolutions to 24 channels ran 25-40% faster.
NARROW_CHANNEL_TILES = (32, 16, 64, 24, 8, 128)
VECTOR_FLOATS = 8  # a channel tile that is not a power of two runs as vectors of this many
DEPTHWISE_PIXELS = 4  # of a depthwise convolution's tile on narrow registers (_tile_depthwise)
MIN_PIXELS = 4
REDUCTION_UNROLL = 4
# Threads split the rows, not the channel tiles, of a kernel whose output has at least this
# fraction of its weight's elements (see _tile); measured best of 0.001-4 on both MobileNetV2
# and ResNet-18.
ROWS_FIRST_OUTPUT_TO_WEIGHT = 0.25
DATA_PARALLEL = 0  # tirx IterVar.iter_type of a spatial loop
VECTOR_LANES = (64, 32, 16, 8)  # how a padding loop over channels is vectorized

POOL_BLOCK = "pool_max"  # TVM's name for a max pooling's main block

SCHEDULE_NAME = "deploytool-register-tiled"
# The register tile of convolutions on narrow registers (see _tile_remainder): 12 of the 16 AVX2
# registers accumulate, 2 hold weights, 1 a broadcast input.
REMAINDER_TILE = (6, 16)
MIN_CHANNEL_TILES = 8  # the threads share the channel tiles, so there must be a few
ROW_REMAINDER_REDUCTION = 512  # see _tile_remainder
BROADCAST_EPILOGUE = 4  # times the main block's output: the epilogue runs after (_broadcast)


def accumulator_lanes(target) -> int:
    """How many float lanes of registers a tile may accumulate in, for a ``tvm.target.Target``."""
    from tvm.target.codegen import target_has_features

    return TILE_LANES if target_has_features("avx512f", target) else NARROW_TILE_LANES


def schedule_kernel(func, lanes: int = TILE_LANES):
    """Schedule one fused kernel whose main block is a channels-last convolution or a matrix
    product (see :func:`register_tiled`).

    Returns the scheduled PrimFunc, or None when the kernel is not one it knows (or its shapes
    are not static), leaving it to the other default schedules.
    """
    import tvm

    sch = register_tiled(tvm.IRModule({"main": func}), lanes)
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)


def packs_weights(func) -> bool:
    """Whether the kernel's main block is one whose constant weights are worth packing."""
    import tvm
    from tvm import s_tir

    return _known_block(_block_names(s_tir.Schedule(tvm.IRModule({"main": func})))) is not None


def _block_names(sch) -> list[str]:
    """The names of the kernel's top-level blocks; none for a kernel written without blocks
    (TVM legalizes some operators, e.g. cumsum, into plain loops without a root block)."""
    from tvm.s_tir.schedule import ScheduleError

    try:
        root = sch.get_sblock("root")
    except ScheduleError:
        return []
    return [sch.get(b).name_hint for b in sch.get_child_blocks(root)]


def _known_block(names: list[str]) -> str | None:
    """The first of KNOWN_BLOCKS among a kernel's blocks, or None."""
    return next((n for n in KNOWN_BLOCKS if n in names), None)


def register_tiled(mod, lanes: int = TILE_LANES):
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
    names = _block_names(sch)
    main = _known_block(names)
    if main is None:
        return None
    try:
        _tile(sch, func, names, main, lanes)
    except Exception:  # a form these schedules do not cover (tests check the forms they do)
        return None
    return sch


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)  # TypeError for a symbolic extent


def pooled(mod):
    """The schedule of a channels-last max pooling kernel (``mod["main"]``), or None when it is
    not one: rows split between the threads; per output pixel, the window's maximum taken a
    vector of channels at a time, with the padding read in place. (MetaSchedule's pooling rule
    reduced one channel at a time, and padded each thread's rows into a scratch buffer first:
    ResNet-18's max pooling took 90 us alone, this one 35 us.)

    Returns
    -------
    tvm.s_tir.Schedule or None
        A traced schedule, so that its trace can be stored as a tuning record.
    """
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    names = _block_names(sch)
    if POOL_BLOCK not in names or set(names) - {POOL_BLOCK, "pad_temp"}:
        return None
    try:
        if "pad_temp" in names:
            sch.compute_inline(sch.get_sblock("pad_temp"))
        block = sch.get_sblock(POOL_BLOCK)
        *spatial, channels, window_rows, window_columns = sch.get_loops(block)
        channel_var = sch.get(block).iter_vars[len(spatial)].var
        if not all(read.region[-1].min.same_as(channel_var) for read in sch.get(block).reads):
            return None  # the last axis is a window's (NCHW), not the channels
        lanes = next((v for v in (16, 8) if _extent(sch, channels) % v == 0), None)
        if lanes is None:
            return None
        channel_outer, channel_inner = sch.split(channels, [None, lanes])
        sch.reorder(*spatial, channel_outer, window_rows, window_columns, channel_inner)
        sch.parallel(sch.fuse(*spatial[:-1]))
        sch.unroll(window_rows)
        sch.unroll(window_columns)
        sch.vectorize(channel_inner)
        init = sch.decompose_reduction(block, window_rows)
        sch.vectorize(sch.get_loops(init)[-1])
    except Exception:  # a form this schedule does not cover (tests check the one it does)
        return None
    return sch


def schedule_pool(func):
    """:func:`pooled` for one kernel: the scheduled PrimFunc, or None."""
    import tvm

    sch = pooled(tvm.IRModule({"main": func}))
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _vector_floats(lanes: int) -> int:
    """Floats of one vector register for an accumulator budget of ``lanes`` (see
    accumulator_lanes): 16 on AVX-512, else VECTOR_FLOATS (AVX2; NEON's 4-float registers,
    32 of them, hold the same tiles in floats as AVX2's 16 of 8)."""
    return 16 if lanes >= TILE_LANES else VECTOR_FLOATS


def _registers(pixels: int, channel: int, lanes: int, group: int | None = None) -> int:
    """Vector registers the accumulators of a ``pixels`` x ``channel`` tile take: a channel
    tile narrower than a register still takes one per pixel, and so does each group's part."""
    return pixels * -(-channel // _group_vector(lanes, group))


def _group_vector(lanes: int, group: int | None) -> int:
    """Floats of one vector of a tile's channels: a register, or the part of one that a group's
    output channels fill (see _group_width)."""
    floats = _vector_floats(lanes)
    return floats if group is None else max(v for v in (floats, 8, 4) if group % v == 0
                                                and v <= floats)


def _tile_sizes(channels: int, width: int, lanes: int = TILE_LANES,
                remainder: bool = False, group: int | None = None) -> tuple[int, int]:
    """(output pixels or rows, output channels) of the register tile: two vectors of channels
    by up to 8 pixels where they divide (measured on ResNet-18, this beat 4x64, 2x128 and 14x16
    where those differed), wider channel tiles for a matrix-vector product (one row).

    The accumulators fit the registers (lanes / _vector_floats of them), counted in registers:
    8-channel tiles on AVX-512 once took 32 pixels, twice the registers there are, and spilled
    (a 1x1 convolution from 24 to 40 channels ran at 46 GFLOP/s). With ``remainder``, where no
    tile whose pixels divide ``width`` fills half the registers (197 tokens, a prime), the
    tile takes as many pixels as fit and the caller gives the last few a tile of their own:
    the pixels then need not divide ``width``.

    With ``group`` (a grouped convolution's output channels per group, see _group_width), a
    channel tile is whole groups or a part of one, in vectors that never span two groups.
    """
    tiles = CHANNEL_TILES if lanes >= TILE_LANES else NARROW_CHANNEL_TILES
    if group is not None:  # whole groups first, then parts of one
        wholes = [c for c in tiles if c % group == 0]
        tiles = [*wholes, *(group * k for k in range(1, 5) if group * k not in wholes),
                 *(c for c in tiles if group % c == 0 and c % group)]
    options = [c for c in tiles if channels % c == 0 and c <= lanes]
    if not options:
        raise ValueError(f"{channels} channels do not split into vectors")
    registers = lanes // _vector_floats(lanes)
    if width < MIN_PIXELS:
        # Few rows: the channels alone must give the tile its independent accumulators. A
        # classifier's 1000 outputs split only into single vectors of 8 by the tiles above, and
        # one accumulator waits on each multiply-add before the next (MobileNetV2's took 102 us
        # alone); 40 channels are five vectors.
        options = sorted({*options, *(c for c in range(8, lanes // 2 + 1, 8) if channels % c == 0)},
                         reverse=True)

    def most_pixels(channel: int) -> int:
        return max(1, registers // _registers(1, channel, lanes, group))

    def dividing(channel: int) -> int:
        return max(d for d in range(1, most_pixels(channel) + 1) if width % d == 0)

    tile = next(((dividing(c), c) for c in options if dividing(c) >= min(width, MIN_PIXELS)),
                None)
    if tile is None:
        tile = dividing(options[0]), options[0]
    if remainder and 2 * _registers(*tile, lanes, group) < registers:
        partial = next(((min(width, most_pixels(c)), c) for c in options
                        if min(width, most_pixels(c)) >= MIN_PIXELS), None)
        if (partial is not None
                and _registers(*partial, lanes, group) > _registers(*tile, lanes, group)):
            return partial
    return tile


def _tile(sch, func, names: list[str], main: str, lanes: int) -> None:
    block = sch.get_sblock(main)
    iter_vars = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    spatial = sum(1 for v in iter_vars if int(v.iter_type) == DATA_PARALLEL)
    if (spatial < 2 or len(loops) != len(iter_vars)
            or any(int(v.iter_type) != DATA_PARALLEL for v in iter_vars[:spatial])):
        raise ValueError("not spatial loops then reduction loops")
    padded, padded_weight = False, None
    if main == "matmul" and _extent(sch, loops[spatial - 1]) % VECTOR_FLOATS:
        names, padded_weight = _pad_channels(sch, func, names, main, spatial, lanes)
        padded = True
        block = sch.get_sblock(main)
        iter_vars = sch.get(block).iter_vars
        loops = sch.get_loops(block)
    outer, (width, channels), reduction = loops[:spatial - 2], loops[spatial - 2:spatial], \
        loops[spatial:]
    rows_first = threads_split_rows(sch, loops[:spatial], loops[spatial:])
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    epilogue = names[names.index(main) + 1:]
    broadcast = _broadcast(sch, main, epilogue)
    for name in epilogue:  # bias, residual add, activation: into the last one, per tile
        if name in outputs:
            continue
        if broadcast and _size(sch, name) <= _size(sch, epilogue[-1]) // BROADCAST_EPILOGUE:
            # the gate's bias and sigmoid, once per channel: inlined into the multiplication,
            # they ran once per pixel and channel
            _vectorize_channels(sch, sch.get_loops(sch.get_sblock(name))[-1])
            continue
        sch.compute_inline(sch.get_sblock(name))
    epilogue = [name for name in epilogue if name in _block_names(sch)]
    _inline_producers(sch, names, main)
    names = [name for name in names if name in _block_names(sch)]
    if "pad_temp" in names and _plain_copy(sch, sch.get_sblock("pad_temp")):
        sch.compute_inline(sch.get_sblock("pad_temp"))
        names = [name for name in names if name != "pad_temp"]
    if _depthwise_tile_fits(sch, main, width, channels, reduction, lanes):
        _tile_depthwise(sch, func, names, block, outer, width, channels, reduction,
                        iter_vars[spatial - 1].var, epilogue)
        return
    if _remainder_tile_fits(sch, main, outer, width, channels, reduction, rows_first, lanes):
        _tile_remainder(sch, func, names, block, outer, width, channels, reduction,
                        iter_vars[spatial - 1].var, epilogue, rows_first)
        return
    group = _group_width(sch, main, block, iter_vars[spatial - 1].var, channels, reduction)
    outer, width, (pixels, channel), joined_rows = _pixel_loop(sch, main, outer, width, channels,
                                                               lanes, group)
    # Padded channels: a tile's epilogue would write some of its channels, in vectors
    # predicated element by element; after the tiles, it runs in whole vectors (a ViT's
    # attention scores 710 -> 405 us on one Zen 4 core).
    joined_rows = joined_rows or padded or broadcast
    if _extent(sch, width) % pixels:
        _tile_partitioned(sch, func, names, main, block, outer, width, channels, reduction,
                          iter_vars[spatial - 1].var, epilogue, (pixels, channel), joined_rows,
                          rows_first, padded_weight, group)
        return

    channel_outer, channel_inner = sch.split(channels, [None, channel])
    width_outer, width_inner = sch.split(width, [None, pixels])
    innermost, unrolled = _split_for_unroll(sch, reduction[-1])
    first_reduction = reduction[0] if len(reduction) > 1 else innermost
    # Channel tiles first, each thread also prefetches the next weight slice while it sweeps
    # the rows.
    tile_loops = tile_order(outer, width_outer, channel_outer, rows_first)
    sch.reorder(*tile_loops, *reduction[:-1], innermost, *unrolled, width_inner, channel_inner)
    tiles = _epilogue_and_threads(sch, epilogue, joined_rows, tile_loops)
    _unroll_tile(sch, block, unrolled, width_inner, channel_inner, first_reduction, group)
    if "pad_temp" in names:
        _schedule_padding(sch, sch.get_sblock("pad_temp"), tiles,
                          per_tile=main == "group_conv2d_nhwc")
    # Packing comes last, as the postprocessing part of the trace: a tuning search that starts
    # from this schedule replays it without that part and packs in its own way (replayed with
    # it, MetaSchedule's own layout rewrite failed on the already packed weight).
    sch.enter_postproc()
    if padded_weight is not None:
        _pack_padded(sch, padded_weight, channel)
        return
    packed = _pack_weight(sch, func, block, iter_vars[spatial - 1].var, channel)
    if packed is not None and not rows_first:
        sch.annotate(innermost, PREFETCH_LOOP, packed)


def threads_split_rows(sch, spatial: list, reduction: list) -> bool:
    """Whether a product's tiles go rows first (the threads split the rows), rather than
    channel tiles first: where its output has at least ``ROWS_FIRST_OUTPUT_TO_WEIGHT`` of its
    weight's elements. The threads take the tiles in contiguous runs of that order. Rows first,
    each thread finds its rows of the image in its own cache, left there by the kernel before
    (MobileNetV2 ran 25% faster than with channel tiles first). Channel tiles first, each
    thread keeps one weight slice in cache while it sweeps every row: in AMX tiles, three 3x3
    convolutions of 512 channels at 7x7 ran 1.4x-1.6x faster than rows first (int8 and bf16),
    their weight slices read once instead of once a row."""
    output = math.prod(_extent(sch, loop) for loop in spatial)
    weight = math.prod(_extent(sch, loop) for loop in [spatial[-1], *reduction])
    return output >= ROWS_FIRST_OUTPUT_TO_WEIGHT * weight


def tile_order(rows: list, width_tiles, channel_tiles, rows_first: bool) -> list:
    """The loops over a product's tiles, outermost first (see threads_split_rows)."""
    if rows_first:
        return [*rows, width_tiles, channel_tiles]
    return [channel_tiles, *rows, width_tiles]


def _inline_producers(sch, names: list[str], main: str) -> None:
    """Inline the blocks before ``main`` that only the epilogue reads (a dequantized residual)
    into it. What the main block reads stays whole (inlined, a transpose was recomputed per
    product), and so does the padding, which the tiles schedule themselves."""
    for name in names[:names.index(main)]:
        consumers = {sch.get(c).name_hint for c in sch.get_consumers(sch.get_sblock(name))}
        if name != "pad_temp" and main not in consumers:
            sch.compute_inline(sch.get_sblock(name))


def _broadcast(sch, main: str, epilogue: list[str]) -> bool:
    """Whether the epilogue's output is larger than the main block's: squeeze-and-excitation's
    gate, a 1x1 convolution of one pixel, multiplies a whole feature map. Per channel tile, the
    epilogue would sweep all its pixels at a stride of the row; after the tiles, it runs over the
    rows, vectorized along the channels."""
    if not epilogue:
        return False
    main_block = sch.get(sch.get_sblock(main))
    spatial = [v for v in main_block.iter_vars if int(v.iter_type) == DATA_PARALLEL]
    return _size(sch, epilogue[-1]) > BROADCAST_EPILOGUE * math.prod(int(v.dom.extent)
                                                                     for v in spatial)


def _size(sch, name: str) -> int:
    """The iterations of block ``name``'s loops."""
    return math.prod(_extent(sch, loop) for loop in sch.get_loops(sch.get_sblock(name)))


def _pad_channels(sch, func, names: list[str], main: str, spatial: int, lanes: int):
    """Pad a matrix product's output channels (its last spatial loop) to whole vectors
    (``pad_einsum``): a ViT's attention scores over 197 tokens, a 10-way classifier. The
    operand indexed by them is copied into a padded buffer first (zeros beyond), at compile time
    where it is a constant weight; the padded outputs are never written out.

    Returns the kernel's block names and the name of the padded weight's block (None where the
    padded operand is not a constant weight), for :func:`_pack_padded`.
    """
    vector = _vector_floats(lanes) if _extent(sch, sch.get_loops(sch.get_sblock(main))[
        spatial - 1]) > VECTOR_FLOATS else VECTOR_FLOATS
    padding = [1] * len(sch.get(sch.get_sblock(main)).iter_vars)
    padding[spatial - 1] = vector
    sch.pad_einsum(sch.get_sblock(main), padding)
    after = _block_names(sch)
    weight = None
    free = _layout_free(func)
    for name in after[:after.index(main)]:
        if name in names:
            continue
        pad = sch.get_sblock(name)
        if any(read.source.name in free for read in sch.get(pad).reads):
            weight = name  # packed with the padding, at compile time (_pack_padded)
        else:
            _schedule_padding(sch, pad, None, per_tile=False)
    return after, weight


def _layout_free(func) -> set[str]:
    """The names of the parameters a kernel's caller passes as constants."""
    attrs = func.attrs
    if attrs is None or "layout_free_buffers" not in attrs:
        return set()
    return {func.params[int(i)].name for i in attrs["layout_free_buffers"]}


def _pack_padded(sch, name: str, channel: int) -> None:
    """Pack the padded weight block ``name`` writes as _pack_weight packs (``(N/t)K(t)``), and
    mark it to run at compile time."""
    import tvm

    pad = sch.get_sblock(name)
    rank = len(sch.get(pad).writes[0].region)
    index_map = tvm.tirx.IndexMap.from_func(
        lambda *axes: (axes[-1] // channel, *axes[:-1], axes[-1] % channel), ndim=rank)
    sch.transform_layout(pad, ("write", 0), index_map)
    sch.annotate(pad, "meta_schedule.layout_rewrite_preproc", True)


def _epilogue_and_threads(sch, epilogue: list[str], joined_rows: bool, tile_loops: list):
    """Place the epilogue (a pass of its own over joined rows, else inside each tile), then fuse
    the tile loops and split them between the threads; returns the fused loop."""
    if epilogue and joined_rows:
        _epilogue_pass(sch, epilogue[-1])
    elif epilogue:
        last = sch.get_sblock(epilogue[-1])
        sch.reverse_compute_at(last, tile_loops[-1])
        _vectorize_channels(sch, sch.get_loops(last)[-1])
    tiles = sch.fuse(*tile_loops)
    sch.parallel(tiles)
    return tiles


def _tile_partitioned(sch, func, names, main, block, outer, width, channels, reduction,
                      channel_var, epilogue, tile, joined_rows, rows_first,
                      padded_weight=None, group: int | None = None) -> None:
    """_tile's register tile over pixels it does not divide: the last few pixels of each row
    (or of all of them, rows joined) get a tile of their own (``loop_partition``), its
    accumulators zeroed in registers per tile as in the others. The pixel tiles of a row run
    in one thread: the threads share the rows and channel tiles.

    For a prime number of rows, such as a ViT's 197 tokens, _tile's tiles had one row (two
    accumulators, each waiting on its last multiply-add): its 197x256 by 256x1024 product ran
    at 4 GFLOP/s on one Zen 4 core, in tiles of 8 rows (and one of 5) at 30 GFLOP/s.
    """
    pixels, channel = tile
    count = _extent(sch, width)
    channel_outer, channel_inner = sch.split(channels, [None, channel])
    pixel_outer, pixel_inner = sch.split(width, [None, pixels])
    innermost, unrolled = _split_for_unroll(sch, reduction[-1])
    tile_loops = [*outer, channel_outer] if rows_first else [channel_outer, *outer]
    sch.reorder(*tile_loops, pixel_outer, *reduction[:-1], innermost, *unrolled, pixel_inner,
                channel_inner)
    tiles = _epilogue_and_threads(sch, epilogue, joined_rows, tile_loops)
    for loop in unrolled:
        sch.unroll(loop)
    sch.unroll(pixel_inner)
    _vectorize_tile_channels(sch, channel_inner, group)
    if "pad_temp" in names:
        _schedule_padding(sch, sch.get_sblock("pad_temp"), tiles,
                          per_tile=main == "group_conv2d_nhwc")
    sch.enter_postproc()
    if padded_weight is not None:
        _pack_padded(sch, padded_weight, channel)
    else:
        _pack_weight(sch, func, block, channel_var, channel)
    # After the packing, which would otherwise land inside the partition; the accumulators
    # are zeroed per partition (a partitioned loop must hold a single block).
    for part in sch.loop_partition(pixel_outer, [count // pixels, None]):
        part_block = sch.get_child_blocks(part)[0]
        loops = sch.get_loops(part_block)
        at = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(part)))
        init = sch.decompose_reduction(part_block, loops[at + 1])
        sch.vectorize(sch.get_loops(init)[-1])


def _group_width(sch, main: str, block, channel_var, channels, reduction) -> int | None:
    """A grouped convolution's output channels per group, where they fill whole vectors of 4
    floats or more; None for other kernels (depthwise ones included: one channel per group)."""
    if main != "group_conv2d_nhwc":
        return None
    outputs = _extent(sch, channels)
    per_group = _extent(sch, reduction[-1])  # input channels; the loop innermost in TVM's block
    data = [r.source for r in sch.get(block).reads
            if len(r.region) == 4 and not r.region[-1].min.same_as(channel_var)]
    if len(data) != 1:
        return None
    groups = int(data[0].shape[-1]) // per_group
    width = outputs // groups if groups and outputs % groups == 0 else 0
    return width if width > 1 and width % 4 == 0 and width < outputs else None


def _depthwise_tile_fits(sch, main: str, width, channels, reduction, lanes: int) -> bool:
    """Whether a convolution takes :func:`_tile_depthwise`'s schedule: a depthwise one (one
    input channel per group) on narrow registers whose rows split into DEPTHWISE_PIXELS."""
    return (main == "group_conv2d_nhwc" and lanes < TILE_LANES
            and _extent(sch, reduction[-1]) == 1
            and _extent(sch, width) % DEPTHWISE_PIXELS == 0
            and _extent(sch, channels) % VECTOR_FLOATS == 0)


def _tile_depthwise(sch, func, names, block, outer, width, channels, reduction, channel_var,
                    epilogue) -> None:
    """A depthwise convolution in tiles of DEPTHWISE_PIXELS pixels by one 8-float vector of
    channels, rows split between the threads, each tap's inputs loaded straight from the
    unpadded input (the padding inlined: a tap outside the image reads zero).

    _tile's tiles of 16 channels first copied each tile's padded input rows (3x6 pixels for
    4) into a scratch buffer. Alone, with its input in cache, that ran about as fast; inside
    the model, where the previous kernel has just written the input, MobileNetV2's depthwise
    convolutions at 112x112, 56x56 and 28x28 ran 20-55% faster this way (the one at 56x56,
    144 channels: 534 -> 248 us), the schedule MetaSchedule's search had found for it.
    Rows of 14 or 7 pixels keep _tile's tiles, which were already faster than ONNX Runtime's.
    """
    channel_outer, channel_inner = sch.split(channels, [None, VECTOR_FLOATS])
    pixel_outer, pixel_inner = sch.split(width, [None, DEPTHWISE_PIXELS])
    sch.reorder(*outer, pixel_outer, channel_outer, *reduction, pixel_inner, channel_inner)
    sch.parallel(sch.fuse(*outer, pixel_outer))
    if epilogue:
        last = sch.get_sblock(epilogue[-1])
        sch.reverse_compute_at(last, channel_outer)
        sch.vectorize(sch.get_loops(last)[-1])
    if "pad_temp" in names:
        sch.compute_inline(sch.get_sblock("pad_temp"))
    _unroll_tile(sch, block, [], pixel_inner, channel_inner, reduction[0])
    sch.enter_postproc()
    _pack_weight(sch, func, block, channel_var, VECTOR_FLOATS)


def _plain_copy(sch, block) -> bool:
    """Whether a block only copies its input: the "padding" TVM's convolutions have where they
    pad nothing (1x1). Inlined, the kernel reads its input in place; as a pass of its own it
    copied the whole input first (MobileNetV2's 1x1 convolution at 112x112, 32 to 16 channels,
    ran 153 us with the copy, 117 us without)."""
    from tvm.ir.expr import TensorLoad  # what tirx.BufferLoad builds

    return isinstance(sch.get(block).body.value, TensorLoad)


def _remainder_tile_fits(sch, main: str, outer, width, channels, reduction, rows_first: bool,
                         lanes: int) -> bool:
    """Whether a convolution takes :func:`_tile_remainder`'s schedule: at least one full tile
    of pixels (of each row, rows first)."""
    pixels, channel = REMAINDER_TILE
    if (main != "conv2d_nhwc" or not pixels * channel <= lanes < TILE_LANES
            or _extent(sch, channels) % channel):
        return False
    if not rows_first:
        return (_extent(sch, channels) // channel >= MIN_CHANNEL_TILES
                and math.prod(_extent(sch, loop) for loop in [*outer, width]) >= pixels)
    return (_extent(sch, width) >= pixels
            and math.prod(_extent(sch, loop) for loop in reduction) >= ROW_REMAINDER_REDUCTION
            and _extent(sch, reduction[-1]) % REDUCTION_UNROLL == 0)


def _tile_remainder(sch, func, names, block, outer, width, channels, reduction, channel_var,
                    epilogue, rows_first: bool) -> None:
    """REMAINDER_TILE for a convolution on narrow registers, over pixels in any number: the
    last few pixels get a tile of their own (``loop_partition``).

    No 12-accumulator tile divides ResNet's and MobileNetV2's widths (7 * 2^k), so _tile's
    tiles have 7 or 8 accumulators. Threads split the rows, as in _tile, or where the weights
    outweigh the output, the channel tiles: then all pixels form one loop (rows joined) and
    each thread sweeps its packed weight slice once per pixel tile.

    The accumulators are zeroed in memory, per row or per channel tile, before the pixel tiles
    (loop_partition fails on a loop holding two blocks), and read back per tile: measured
    slower where the reduction is short (MobileNetV2's 1x1 convolutions of 16-160 input
    channels, 9-27%), so rows first it is used only from ROW_REMAINDER_REDUCTION on. Alone,
    ResNet-18's 3x3 convolutions ran 7-25% faster, MobileNetV2's last 1x1 ones 16-31%; whole,
    ResNet-18 11% faster, MobileNetV2 the same within noise (AMD Zen 3). It does not prefetch
    weights (prefetch.py): on that machine, prefetching slowed the old tiles down.
    """
    pixels, channel = REMAINDER_TILE
    if rows_first:
        pixel_loop = width
    else:
        pixel_loop, outer = sch.fuse(*outer, width), []
    count = _extent(sch, pixel_loop)
    channel_outer, channel_inner = sch.split(channels, [None, channel])
    pixel_outer, pixel_inner = sch.split(pixel_loop, [None, pixels])
    innermost, unrolled = _split_for_unroll(sch, reduction[-1])
    tile_loops = [pixel_outer, channel_outer] if rows_first else [channel_outer, pixel_outer]
    sch.reorder(*outer, *tile_loops, *reduction[:-1], innermost, *unrolled, pixel_inner,
                channel_inner)
    threads = sch.fuse(*outer) if rows_first else channel_outer
    sch.parallel(threads)
    _unroll_tile(sch, block, unrolled, pixel_inner, channel_inner, pixel_outer)
    if epilogue and rows_first:
        last = sch.get_sblock(epilogue[-1])
        sch.reverse_compute_at(last, threads)
        _vectorize_channels(sch, sch.get_loops(last)[-1])
    elif epilogue:
        _epilogue_pass(sch, epilogue[-1])
    if "pad_temp" in names:
        _schedule_padding(sch, sch.get_sblock("pad_temp"), None, per_tile=False)
    sch.enter_postproc()
    _pack_weight(sch, func, block, channel_var, channel)
    if count % pixels:
        # After the packing, which would otherwise land inside the partition; and in the
        # postprocessing part, so that a search replays the rest, its last tile predicated.
        leftover = sch.loop_partition(pixel_outer, [count // pixels, None])[1]
        if rows_first:
            _widen_leftover(sch, leftover, count % pixels, channel)


def _widen_leftover(sch, leftover, pixels: int, channel: int) -> None:
    """Give the few pixels left over at the end of a row (partition ``leftover``, rows first)
    the channels of several tiles at once, up to REMAINDER_TILE's accumulators: alone, 2 pixels
    by 16 channels have 4 accumulators, and each waits on its last multiply-add (ResNet-18's
    56x56 rows leave 2 pixels after nine 6-pixel tiles; as 2x32, its 3x3 convolutions there
    ran 2% faster alone, the whole model 2-3% faster against ONNX Runtime in one process)."""
    block = sch.get_child_blocks(leftover)[0]
    loops = sch.get_loops(block)
    at = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(leftover)))
    tiles = _extent(sch, loops[at + 1])  # its channel tiles; then the reduction, then the tile
    most = math.prod(REMAINDER_TILE)
    join = max(k for k in range(1, tiles + 1) if tiles % k == 0 and pixels * channel * k <= most)
    if join == 1:
        return
    _, joined = sch.split(loops[at + 1], [None, join])
    *middle, vectorized = sch.get_loops(block)[at + 3:]
    sch.reorder(*middle, joined, vectorized)
    sch.unroll(joined)


def _unroll_tile(sch, block, unrolled: list, pixels, channels, init_at,
                 group: int | None = None) -> None:
    """The register tile's inner loops: the reduction's ``unrolled`` part and the ``pixels``
    unrolled, the ``channels`` vectorized; its accumulators zeroed before loop ``init_at``."""
    for loop in unrolled:
        sch.unroll(loop)
    sch.unroll(pixels)
    _vectorize_tile_channels(sch, channels, group)
    init = sch.decompose_reduction(block, init_at)
    sch.vectorize(sch.get_loops(init)[-1])


def _vectorize_tile_channels(sch, channels, group: int | None = None) -> None:
    """Vectorize a tile's channel loop: as one vector where its extent is a power of two, else
    as vectors of VECTOR_FLOATS (LLVM's code for a vector of, say, 24 floats ran 3x slower than
    three of 8). A tile of several groups (see _group_width) takes one vector or more per group,
    each multiplying one broadcast input: a vector across two groups gathered its inputs
    element by element."""
    extent = _extent(sch, channels)
    if group is not None and extent > group:
        groups, channels = sch.split(channels, [None, group])
        sch.unroll(groups)
        extent = group
    if extent & (extent - 1) and extent % VECTOR_FLOATS == 0:
        vectors, channels = sch.split(channels, [None, VECTOR_FLOATS])
        sch.unroll(vectors)
    sch.vectorize(channels)


def _split_for_unroll(sch, loop):
    """(loop, []) or, where REDUCTION_UNROLL divides it, (its outer part, [its inner part])."""
    extent = _extent(sch, loop)
    if extent % REDUCTION_UNROLL or extent == 1:
        return loop, []
    outer, inner = sch.split(loop, [None, REDUCTION_UNROLL])
    return outer, [inner]


def _epilogue_pass(sch, name: str) -> None:
    """Run the epilogue block ``name`` after the kernel's tiles, parallel over rows: where a
    tile's pixels may span two rows, no loop nest of the epilogue can follow them (per tile, it
    read accumulators not yet computed). One more pass over an output of a few hundred KiB."""
    block = sch.get_sblock(name)
    *rows, channels = sch.get_loops(block)
    if len(rows) > 1:
        sch.parallel(sch.fuse(*rows[:-1]))
    count = _extent(sch, channels)
    if any(count % lanes == 0 for lanes in VECTOR_LANES) or count < VECTOR_FLOATS:
        _vectorize_channels(sch, channels)
        return
    # rows of 197: whole vectors, then the rest in a loop of its own
    outer, inner = sch.split(channels, [None, VECTOR_FLOATS])
    sch.vectorize(inner)
    sch.loop_partition(outer, [count // VECTOR_FLOATS, None])


def _pixel_loop(sch, main: str, outer: list, width, channels, lanes: int,
                group: int | None = None):
    """The loop a register tile takes its pixels from, and the tile: the output's width, or for
    a convolution whose rows are too short for a full tile (14 pixels, where two rows' 196 take
    4-pixel tiles; 7x7 outputs gain nothing), its rows and width fused, so that a tile's pixels
    may span two rows. On AVX2 that is 4x16 over 14x14 outputs instead of 7x8, where
    _tile_remainder's 6x16 tile does not apply: ResNet-18's 14x14 convolutions (which now take
    that one) ran 7-17% faster alone, and MobileNetV2 (its 1x1 convolutions at 14x14) about 5%
    faster. Only for narrow registers
    (AVX2, NEON): AVX-512 would join 28-pixel rows for 8x32 tiles instead of 7x32, which load
    about as much per multiply-add, and that was never measured.

    Returns (outer loops, pixel loop, (pixels, channels) of the tile, whether rows were fused).
    """
    tile = _tile_sizes(_extent(sch, channels), _extent(sch, width), lanes, remainder=True,
                       group=group)
    if main != "conv2d_nhwc" or not outer or lanes >= TILE_LANES:
        return outer, width, tile, False
    joined = _tile_sizes(_extent(sch, channels), _extent(sch, outer[-1]) * _extent(sch, width),
                         lanes)
    if joined[0] * joined[1] <= tile[0] * tile[1]:
        return outer, width, tile, False
    return outer[:-1], sch.fuse(outer[-1], width), joined, True


def _pack_weight(sch, func, block, channel_var, channel: int) -> int | None:
    """Pre-pack the block's constant weight, indexed by output channel last, so that each
    tile's channels are contiguous. Returns the index of the packed weight among the block's
    reads, or None when there is no constant weight to pack."""
    import tvm

    free = _layout_free(func)
    reads = [i for i, region in enumerate(sch.get(block).reads)
             if region.source.name in free and len(region.region) >= 2
             and region.region[-1].min.same_as(channel_var)]
    if not reads:
        return None
    packed = sch.cache_read(block, reads[0], "global")
    rank = len(sch.get(block).reads[reads[0]].region)
    index_map = tvm.tirx.IndexMap.from_func(
        lambda *axes: (axes[-1] // channel, *axes[:-1], axes[-1] % channel), ndim=rank)
    sch.transform_layout(packed, ("write", 0), index_map)
    sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", True)
    return reads[0]


def _schedule_padding(sch, pad, tiles, per_tile: bool) -> None:
    """The zero padding of a convolution's input, vectorized over channels (scalar, it cost more
    than the depthwise convolution it feeds). ``per_tile`` pads just the rows each tile reads,
    inside the tile: padding the whole input first costs a pass over memory as long as a
    depthwise convolution itself. Otherwise the padding runs first, parallel over rows."""
    if per_tile:
        sch.compute_at(pad, tiles)
        _vectorize_channels(sch, sch.get_loops(pad)[-1])
        return
    loops = sch.get_loops(pad)
    _vectorize_channels(sch, loops[-1])
    if len(loops) > 2:
        sch.parallel(sch.fuse(*loops[:-2]))


def _vectorize_channels(sch, loop) -> None:
    lanes = next((v for v in VECTOR_LANES if _extent(sch, loop) % v == 0), None)
    if lanes is not None:
        sch.vectorize(sch.split(loop, [None, lanes])[1])
