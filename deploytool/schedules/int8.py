"""The int8 register tile: 8-bit convolutions and matrix products accumulated in int32 with
AVX-512 VNNI's ``vpdpbusd``, which adds four u8 x s8 products into each of 16 int32 lanes.

A tile holds ``pixels x vectors`` accumulators of 16 output channels. For each group of four
input channels it broadcasts the four activation bytes of a pixel and multiplies them with a
16x4 block of the weight, packed at compile time as ``(O/16) KH KW (I/4) 16 4`` (convolutions)
or ``(N/16) (K/4) 16 4`` (matrix products), so that every block is one 64-byte load.
"""

from __future__ import annotations

import functools
import math

from .cpu import _block_names, _extent, _inline_producers, _layout_free

INT8_BLOCKS = ("conv2d_nhwc", "matmul")
LANES = 16  # int32 accumulators in one 512-bit register
GROUP = 4  # input channels that one vpdpbusd lane sums
MAX_ACCUMULATORS = 24  # of AVX-512's 32 registers: the rest hold weights and the broadcast
MAX_VECTORS = 4  # 64 output channels of a tile


VNNI_INTRIN = "deploytool_dot_16x4_vnni"


@functools.cache
def _register_intrinsic() -> None:
    """TVM's own ``dot_16x4_vnni`` passes the bytes to ``vpdpbusd`` as 16 x i32, which the LLVM
    inside TVM 0.27 rejects (it declares them 64 x i8); this one passes 64 x i8."""
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def vnni(a: T.Buffer((4,), "uint8", offset_factor=1),
             b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            word = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(word, 16), dtype="int8x64"),
                b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(VNNI_INTRIN, dot_product_16x4_u8i8i32_desc, vnni, override=True)


def schedule_int8(func):
    """The VNNI-tensorized schedule of a fused kernel whose main block is an 8-bit convolution
    (one group) or matrix product by a constant weight, or None when it is not one (or its
    channels do not split into 16s and 4s)."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        if not _tile(sch, func):
            return None
    except Exception:  # a form this schedule does not cover (tests check the forms it does)
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _is_int8_product(sch, block) -> bool:
    stmt = sch.get(block)
    dtypes = sorted(str(r.source.dtype) for r in stmt.reads
                    if str(r.source.dtype) in ("int8", "uint8"))
    return dtypes == ["int8", "uint8"] and str(stmt.writes[0].source.dtype) == "int32"


def _tile_shape(width: int, vectors: int) -> tuple[int, int]:
    """(pixels, vectors of 16 channels) of a tile: the most accumulators that fit, each count
    dividing its loop."""
    best = (1, 1)
    for v in range(1, min(vectors, MAX_VECTORS) + 1):
        if vectors % v:
            continue
        for p in range(1, MAX_ACCUMULATORS // v + 1):
            if width % p == 0 and (p * v, v) > (best[0] * best[1], best[1]):
                best = (p, v)
    return best


def _tile(sch, func) -> bool:
    names = _block_names(sch)
    main = next((n for n in INT8_BLOCKS if n in names), None)
    if main is None or not _is_int8_product(sch, sch.get_sblock(main)):
        return False
    block = sch.get_sblock(main)
    loops = sch.get_loops(block)
    reductions = 3 if main == "conv2d_nhwc" else 1
    spatial, reduction = loops[:-reductions], loops[-reductions:]
    width, channels = spatial[-2], spatial[-1]
    if _extent(sch, channels) % LANES or _extent(sch, reduction[-1]) % GROUP:
        return False
    weight = _constant_weight(sch, func, block)
    if weight is None:
        return False
    _inline_around(sch, names, main)
    pixels, vectors = _tile_shape(_extent(sch, width), _extent(sch, channels) // LANES)
    channel_tiles, channel_vectors, lanes = sch.split(channels, [None, vectors, LANES])
    width_tiles, width_pixels = sch.split(width, [None, pixels])
    groups, group = sch.split(reduction[-1], [None, GROUP])
    outer = [*spatial[:-2], width_tiles, channel_tiles]
    sch.reorder(*outer, *reduction[:-1], groups, width_pixels, channel_vectors, lanes, group)
    _pack(sch, block, weight, main)
    output = _epilogue(sch, main, outer[-1])
    sch.parallel(sch.fuse(*outer))
    init = sch.decompose_reduction(block, reduction[0] if reductions > 1 else groups)
    sch.vectorize(sch.get_loops(init)[-1])
    _register_intrinsic()
    sch.tensorize(lanes, VNNI_INTRIN)
    sch.unroll(width_pixels)
    sch.unroll(channel_vectors)
    if output is not None:
        _vectorize_last(sch, output)
    if "pad_temp" in _block_names(sch):
        pad_loops = sch.get_loops(sch.get_sblock("pad_temp"))
        _vectorize_last(sch, sch.get_sblock("pad_temp"))
        if len(pad_loops) > 2:
            sch.parallel(sch.fuse(*pad_loops[:-2]))
    return True


def _constant_weight(sch, func, block) -> int | None:
    """The index, among the block's reads, of its int8 weight when the caller passes it as a
    constant (so that it can be packed at compile time)."""
    free = _layout_free(func)
    return next((i for i, r in enumerate(sch.get(block).reads)
                 if r.source.name in free and str(r.source.dtype) == "int8"), None)


def _inline_around(sch, names: list[str], main: str) -> None:
    """Inline the epilogue (requantization, activation, the next quantization) into its last
    block, and the elementwise producers of its other inputs (a dequantized residual)."""
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for name in names[names.index(main) + 1:]:
        if name not in outputs:
            sch.compute_inline(sch.get_sblock(name))
    _inline_producers(sch, names, main)


def _pack(sch, block, weight: int, main: str) -> None:
    """Pack the weight as the module's docstring says, marked to run at compile time."""
    import tvm

    packed = sch.cache_read(block, weight, "global")
    if main == "conv2d_nhwc":  # HWIO
        index_map = tvm.tirx.IndexMap.from_func(
            lambda h, w, i, o: (o // LANES, h, w, i // GROUP, o % LANES, i % GROUP))
    else:  # KN
        index_map = tvm.tirx.IndexMap.from_func(
            lambda k, n: (n // LANES, k // GROUP, n % LANES, k % GROUP))
    sch.transform_layout(packed, ("write", 0), index_map)
    sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", True)


def _epilogue(sch, main: str, tile_loop):
    """Compute the kernel's output block per tile, after the tile's accumulation."""
    names = _block_names(sch)
    following = names[names.index(main) + 1:]
    if not following:
        return None
    output = sch.get_sblock(following[-1])
    sch.reverse_compute_at(output, tile_loop)
    return output


def _vectorize_last(sch, block) -> None:
    loop = sch.get_loops(block)[-1]
    extent = _extent(sch, loop)
    lanes = math.gcd(extent, 64)
    if lanes >= 4:
        sch.vectorize(sch.split(loop, [None, lanes])[1])
