"""Register tiles of dot-product instructions: 8-bit products accumulated in int32 with
AVX-512 VNNI's ``vpdpbusd`` (four u8 x s8 products into each of 16 int32 lanes) or ARMv8.2's
``sdot`` (four s8 x s8 products into each of 4 int32 lanes), and bfloat16 ones accumulated in
float32 with AVX-512 BF16's ``vdpbf16ps`` (two products into each of 16 float32 lanes).

A tile holds ``pixels x vectors`` accumulators of L output channels (a vector's lanes: 16, or
4). For each group of input channels an instruction sums (four, or two) it broadcasts the
group's values of a pixel as one 32-bit word and multiplies them with an L x group block of the
weight, packed at compile time as ``(O/L) KH KW (I/group) L group`` (convolutions) or
``(N/L) (K/group) L group`` (matrix products), so that every block is one vector load.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .cpu import (
    _block_names,
    _extent,
    _inline_producers,
    _layout_free,
    _plain_copy,
    threads_split_rows,
    tile_order,
)
from .packing import pack_in_kernel

LANES = 16  # 32-bit accumulators in one 512-bit register
MAX_ACCUMULATORS = 24  # of AVX-512's 32 registers: the rest hold weights and the broadcast
MAX_VECTORS = 4  # 64 output channels of a tile
# Independent accumulators that keep both vector pipes busy through an instruction's latency
# (Zen 4 and 5, Ice Lake and later: 2 per cycle, latency 5-6), and the cost of a load or
# broadcast against an instruction's (see padded_extents).
BUSY_ACCUMULATORS = 12
LOAD_COST = 0.25
MIN_GAIN = 0.9
MAX_PADDING = 1.25


@dataclass(frozen=True)
class DotInstruction:
    """One dot-product instruction and the products it computes."""

    name: str  # as the manifest and the build log say it
    feature: str  # the LLVM target feature that has it
    data: str  # dtype of the input, broadcast a group at a time
    weight: str  # dtype of the packed constant weight
    accumulator: str
    group: int  # input channels that one lane sums
    intrinsic: str  # the TensorIntrin it is registered as
    llvm: str  # the LLVM intrinsic (bf16's is called through BF16_FUNCTION)
    lanes: int = LANES  # accumulators of one vector register


VNNI = DotInstruction("vpdpbusd (AVX-512 VNNI)", "avx512vnni", "uint8", "int8", "int32", 4,
                      "deploytool_dot_16x4_vnni", "llvm.x86.avx512.vpdpbusd.512")
# the same on 256-bit registers: a grouped convolution's groups of 8 channels (RegNetY's)
VNNI_8 = DotInstruction("vpdpbusd (AVX-512 VNNI, 8 lanes)", "avx512vnni", "uint8", "int8",
                        "int32", 4, "deploytool_dot_8x4_vnni", "llvm.x86.avx512.vpdpbusd.256",
                        lanes=8)
BF16 = DotInstruction("vdpbf16ps (AVX-512 BF16)", "avx512bf16", "bfloat16", "bfloat16",
                      "float32", 2, "deploytool_dot_16x2_bf16",
                      "llvm.x86.avx512bf16.dpbf16ps.512")
SDOT = DotInstruction("sdot (ARMv8.2 dot product)", "dotprod", "int8", "int8", "int32", 4,
                      "deploytool_dot_4x4_sdot", "llvm.aarch64.neon.sdot.v4i32.v16i8", lanes=4)
# AMX's tiles (schedules/amx.py), where the CPU has them, before vpdpbusd's and vdpbf16ps's
AMX_INT8 = DotInstruction("tdpbusd (AMX-INT8)", "amx-int8", "uint8", "int8", "int32", 4,
                          "deploytool_amx_int8", "llvm.x86.tdpbusd")
AMX_BF16 = DotInstruction("tdpbf16ps (AMX-BF16)", "amx-bf16", "bfloat16", "bfloat16",
                          "float32", 2, "deploytool_amx_bf16", "llvm.x86.tdpbf16ps")


@functools.cache
def _register(instruction: DotInstruction) -> None:
    """Register the instruction's TensorIntrin: what it computes, and how."""
    from tvm.s_tir import TensorIntrin

    how = _dpbf16ps() if instruction is BF16 else _broadcast_bytes(instruction)
    TensorIntrin.register(instruction.intrinsic, _description(instruction), how, override=True)


def _description(instruction: DotInstruction):
    """The products one instruction computes: each of ``lanes`` accumulators adds ``group``
    products of the broadcast input and its row of the weight block."""
    from tvm.script import tirx as T

    lanes, group, acc = instruction.lanes, instruction.group, instruction.accumulator

    @T.prim_func(s_tir=True)
    def description(a: T.Buffer((group,), instruction.data, offset_factor=1),
                    b: T.Buffer((lanes, group), instruction.weight, offset_factor=1),
                    c: T.Buffer((lanes,), acc, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], acc) * T.cast(b[vi, vk], acc)

    return description


def _broadcast_bytes(instruction: DotInstruction):
    """How an 8-bit instruction runs: the input's four bytes broadcast as one 32-bit word to
    every lane, the weight block one vector load, both passed to LLVM as vectors of i8 (TVM's
    own ``dot_16x4_vnni`` passes 16 x i32, which the LLVM inside TVM 0.27 rejects)."""
    from tvm.script import tirx as T

    lanes, group, data, llvm = (instruction.lanes, instruction.group, instruction.data,
                                instruction.llvm)
    block = f"int8x{lanes * group}"

    @T.prim_func(s_tir=True)
    def how(a: T.Buffer((group,), data, offset_factor=1),
            b: T.Buffer((lanes, group), instruction.weight, offset_factor=1),
            c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            word = T.reinterpret(a.vload([0], f"{data}x{group}"), dtype="int32")
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), c.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(word, lanes), dtype=block),
                b.vload([0, 0], dtype=block), dtype=f"int32x{lanes}")

    return how


# TVM legalizes bfloat16 arithmetic to float32 before LLVM sees it (BF16ComputeLegalize): it
# would turn vdpbf16ps's <32 x bfloat> operands into floats, and a kernel's padded input into a
# float32 buffer. So the kernel passes this function the buffers' data pointers and element
# offsets (a buffer read through its pointer is left in bfloat16, stored as 16-bit integers), and
# it loads the pairs as 32-bit words. The offsets are int32, as TVM narrows them anyway (a
# signature that differs from the call's is not inlined, and leaves an undefined symbol). It is
# linked into each kernel that uses it (``pragma_import_llvm``) and inlined there.
BF16_FUNCTION = "deploytool_dpbf16ps"
BF16_LLVM_IR = f"""
declare <16 x float> @{BF16.llvm}(<16 x float>, <32 x bfloat>, <32 x bfloat>)
define internal <16 x float> @{BF16_FUNCTION}(<16 x float> %acc, ptr %data, i32 %i, ptr %weight,
                                              i32 %j) alwaysinline {{
  %a = getelementptr i16, ptr %data, i32 %i
  %b = getelementptr i16, ptr %weight, i32 %j
  %pair = load i32, ptr %a, align 2
  %one = insertelement <16 x i32> poison, i32 %pair, i64 0
  %pairs = shufflevector <16 x i32> %one, <16 x i32> poison, <16 x i32> zeroinitializer
  %x = bitcast <16 x i32> %pairs to <32 x bfloat>
  %y = load <32 x bfloat>, ptr %b, align 2
  %r = call <16 x float> @{BF16.llvm}(<16 x float> %acc, <32 x bfloat> %x, <32 x bfloat> %y)
  ret <16 x float> %r
}}
"""


def _dpbf16ps():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def dpbf16ps(a: T.Buffer((2,), "bfloat16", offset_factor=1),
                 b: T.Buffer((16, 2), "bfloat16", offset_factor=1),
                 c: T.Buffer((16,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:2], b[0:16, 0:2])
            T.writes(c[0:16])
            c[T.ramp(T.int32(0), 1, 16)] = T.call_extern(
                "float32x16", BF16_FUNCTION, c.vload([0], dtype="float32x16"),
                a.data, T.Cast("int32", a.elem_offset), b.data, T.Cast("int32", b.elem_offset))

    return dpbf16ps


def whole_groups(groups: int, weight_shape, lanes: int, word: int) -> bool:
    """Whether a grouped convolution of OIHW ``weight_shape`` fits a tile of vectors of
    ``lanes`` whose instruction sums ``word`` input channels a lane: its groups' output channels
    fill whole vectors and their input channels whole words (RegNetX's groups of 16, RegNetY's
    of 8), so that each vector sums its own group's channels."""
    return (weight_shape[0] // groups) % lanes == 0 and weight_shape[1] % word == 0


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


def _sixteens(channels: int) -> int:
    """``channels`` rounded up to whole vectors of LANES."""
    return -(-channels // LANES) * LANES


def static_extent(dim) -> int | None:
    """A shape dimension as an int; None where it is symbolic."""
    try:
        return int(dim)
    except TypeError:
        return None


def extra_columns(call, columns: int) -> int:
    """Zero columns a matrix product's constant weight of ``columns`` columns is padded with,
    as a convolution's channels (:func:`tile_padding`; its rows are the schedule's)."""
    rows = static_extent(call.ty.shape[-2]) if len(call.ty.shape) > 1 else 1
    return tile_padding(rows, columns)[1] - columns


def tile_padding(width: int | None, channels: int) -> tuple[int, int]:
    """(extra width, padded channels) of a product's output (:func:`padded_extents`); a
    symbolic width (None) is not padded, the channels to sixteens."""
    if width is None:
        return 0, _sixteens(channels)
    padded_width, padded_channels = padded_extents(width, channels)
    return padded_width - width, padded_channels


def padded_extents(width: int, channels: int) -> tuple[int, int]:
    """(width, output channels) a product's rewrite pads its output to, so that this tile takes
    it well: output channels are padded to sixteens at least; more padding (a quarter more at
    most, of either) is taken where its estimated cost is under MIN_GAIN of that. A tile of
    ``pixels x vectors`` accumulators runs at full speed from BUSY_ACCUMULATORS on, and costs a
    weight load per pixel and a broadcast per vector besides. RegNetX's 1x1 convolutions of 400
    channels at 7x7 took tiles of 7 x 1 (7 accumulators) unpadded, 1.5x slower in bf16 than
    in float32."""
    least = _sixteens(channels)

    def cost(padded_width: int, padded_channels: int, p: int, v: int) -> float:
        waste = padded_width * padded_channels / (width * least)
        speed = min(1.0, p * v / BUSY_ACCUMULATORS)
        return waste / speed * (1 + LOAD_COST * (1 / p + 1 / v))

    p, v = _tile_shape(width, least // LANES)
    best, lowest = (width, least), cost(width, least, p, v) * MIN_GAIN
    for v in range(1, MAX_VECTORS + 1):
        padded_channels = -(-channels // (LANES * v)) * LANES * v
        for p in range(1, min(width, MAX_ACCUMULATORS // v) + 1):
            padded_width = -(-width // p) * p
            if max(padded_channels / least, padded_width / width) > MAX_PADDING:
                continue
            estimate = cost(padded_width, padded_channels, p, v)
            if estimate < lowest:
                best, lowest = (padded_width, padded_channels), estimate
    return best


def _tile(sch, func, names: list[str], main: str, instruction: DotInstruction) -> bool:
    group = instruction.group
    block = sch.get_sblock(main)
    reductions = 1 if main == "matmul" else 3
    spatial, reduction = _loop_roles(sch, block, reductions)
    width, channels = spatial[-2], spatial[-1]
    lanes_per_vector = instruction.lanes
    if group_outputs(sch, block, channels, reduction) % lanes_per_vector \
            or _extent(sch, reduction[-1]) % group:
        return False  # a vector's lanes would sum two groups' channels, or a part of a group
    weight, constant = weight_operand(sch, func, block, main, instruction)
    if weight is None:
        return False
    pixels, vectors = _tile_shape(_extent(sch, width),
                                  _extent(sch, channels) // lanes_per_vector)
    wanted = min(_extent(sch, width), MAX_ACCUMULATORS // vectors)
    if main == "matmul" and pixels * 2 <= wanted:
        # Rows no tile size divides well (a ViT's 197 tokens: tiles of one row, a vector of
        # weights loaded per instruction) are padded to a multiple of a full tile, the input
        # copied into the padded rows first.
        sch.pad_einsum(block, [1] * (len(spatial) - 2) + [wanted, 1, 1])
        spatial, reduction = _loop_roles(sch, block, reductions)
        width, channels = spatial[-2], spatial[-1]
        pixels = wanted
        names = _block_names(sch)
    rows_first = threads_split_rows(sch, spatial, reduction)
    _inline_around(sch, names, main)
    padding = _padded_input(sch, main)
    channel_tiles, channel_vectors, lanes = sch.split(channels,
                                                      [None, vectors, lanes_per_vector])
    width_tiles, width_pixels = sch.split(width, [None, pixels])
    groups, in_group = sch.split(reduction[-1], [None, group])
    outer = tile_order(spatial[:-2], width_tiles, channel_tiles, rows_first)
    sch.reorder(*outer, *reduction[:-1], groups, width_pixels, channel_vectors, lanes, in_group)
    _pack(sch, block, weight, main, group, lanes_per_vector, constant)
    output = _epilogue(sch, main, outer[-1])
    sch.parallel(sch.fuse(*outer))
    init = sch.decompose_reduction(block, reduction[0] if reductions > 1 else groups)
    sch.vectorize(sch.get_loops(init)[-1])
    _register(instruction)
    sch.tensorize(lanes, instruction.intrinsic)
    if instruction is BF16:
        # on a serial loop: the code generator drops it from a parallel one
        sch.annotate(groups, "pragma_import_llvm", BF16_LLVM_IR)
    sch.unroll(width_pixels)
    sch.unroll(channel_vectors)
    if output is not None:
        _vectorize_last(sch, output)
    _schedule_padding(sch, padding)
    return True


def group_outputs(sch, block, channels, reduction) -> int:
    """The output channels of one group of a convolution (all of them for a convolution of one
    group or a matrix product)."""
    outputs = _extent(sch, channels)
    data = [r.source for r in sch.get(block).reads if len(r.region) == 4
            and r.source.name not in _layout_free(sch.mod["main"])]
    if len(data) != 1:
        return outputs
    groups = int(data[0].shape[-1]) // _extent(sch, reduction[-1])
    return outputs // groups


def _padded_input(sch, main: str) -> list[str]:
    """The blocks before ``main`` (its padded input: pad_temp, or pad_einsum's rows), less a
    plain copy, inlined: a 1x1 convolution reads its input in place."""
    kept = _block_names(sch)
    padding = kept[:kept.index(main)]
    for name in [n for n in padding if _plain_copy(sch, sch.get_sblock(n))]:
        sch.compute_inline(sch.get_sblock(name))
        padding.remove(name)
    return padding


def _schedule_padding(sch, padding: list[str]) -> None:
    """Vectors along the channels, threads across the rows."""
    for name in padding:
        producer = sch.get_sblock(name)
        loops = sch.get_loops(producer)
        _vectorize_last(sch, producer)
        if len(loops) > 2:
            sch.parallel(sch.fuse(*loops[:-2]))


def _loop_roles(sch, block, reductions: int):
    """(spatial loops, reduction loops) of the block."""
    loops = sch.get_loops(block)
    return loops[:-reductions], loops[-reductions:]


def _constant_weight(sch, func, block, dtype: str) -> int | None:
    """The index, among the block's reads, of its weight when the caller passes it as a
    constant (so that it can be packed at compile time)."""
    free = _layout_free(func)
    return next((i for i, r in enumerate(sch.get(block).reads)
                 if r.source.name in free and str(r.source.dtype) == dtype), None)


def weight_operand(sch, func, block, main: str, instruction: DotInstruction):
    """(index among the block's reads, whether it is a constant) of the product's weight: its
    constant one (packed at compile time), else a matrix product's second operand where both
    are activations of the instruction's dtype (packed by the kernel); (None, False) where it
    has neither."""
    constant = _constant_weight(sch, func, block, instruction.weight)
    if constant is not None:
        return constant, True
    if main != "matmul" or instruction.weight != "bfloat16":
        return None, False
    stmt = sch.get(block)
    written = {w.source.name for w in stmt.writes}
    operands = [i for i, r in enumerate(stmt.reads) if r.source.name not in written
                and str(r.source.dtype) == instruction.weight]
    return (operands[1], False) if len(operands) == 2 else (None, False)


def _inline_around(sch, names: list[str], main: str) -> None:
    """Inline the epilogue (requantization, activation, the next quantization) into its last
    block, and the elementwise producers of its other inputs (a dequantized residual)."""
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for name in names[names.index(main) + 1:]:
        if name not in outputs:
            sch.compute_inline(sch.get_sblock(name))
    _inline_producers(sch, names, main)


def _pack(sch, block, weight: int, main: str, group: int, lanes: int, constant: bool) -> None:
    """Pack the weight as the module's docstring says: a constant marked to be packed at compile
    time, an activation (a matrix product's, its leading batch axes kept) by the kernel
    (schedules/packing.py)."""
    import tvm

    packed = sch.cache_read(block, weight, "global")
    if main != "matmul":  # HWIO
        index_map = tvm.tirx.IndexMap.from_func(
            lambda h, w, i, o: (o // lanes, h, w, i // group, o % lanes, i % group))
    else:  # ... KN
        rank = len(sch.get(packed).writes[0].source.shape)
        index_map = tvm.tirx.IndexMap.from_func(
            lambda *i: (*i[:-2], i[-1] // lanes, i[-2] // group, i[-1] % lanes, i[-2] % group),
            ndim=rank)
    sch.transform_layout(packed, ("write", 0), index_map)
    if constant:
        sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", True)
    else:
        pack_in_kernel(sch, packed, index_map)


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
