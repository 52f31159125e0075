"""AMX tiles of bfloat16 and 8-bit products (Intel Sapphire Rapids and later): ``tdpbf16ps``
multiplies a tile of up to 16 pixels x 32 bfloat16 input channels by one of 32 input channels x
16 output channels into 16 x 16 float32 sums, 512 products an instruction where AVX-512's
``vdpbf16ps`` does 32; ``tdpbusd`` does the same with 64 ``u8 x s8`` products into int32 sums,
1024 an instruction where ``vpdpbusd`` does 64. On a Xeon whose ``vdpbf16ps`` takes 0.81 ns a
call where ``vfmadd231ps`` takes 0.20 (twelve independent sums, one thread), a quarter of the
rate and half of it per product, these tiles are the only bf16 products faster than float32.

A kernel's output tile is ``pixels x 16 V`` channels (V <= 3), its V accumulator tiles held in
tile registers through the whole reduction: per kernel offset and chunk of 64 bytes of input
channels, one tile load of the input (the pixels' rows, a convolution's stride apart, read in
place) and V of the weight, packed as for ``vdpbf16ps`` and ``vpdpbusd`` (``(O/16) KH KW (I/g)
16 g``, g the channels of a 32-bit word: each chunk is 16 rows of 64 bytes). Input channels
beyond the last whole chunk (whole words) take two more tile registers of their own shape.

A matrix product whose rows and columns are whole blocks of 32 (and whose input channels are
whole chunks) takes tiles of 32 x 32 sums instead (``ProductShape.quad``): four accumulator
tiles, two input tiles and two weight tiles, each tile loaded feeding two instructions where the
other tiles feed V. BERT-medium's query, key and value products (128 tokens, 256 channels) took
14 us a call instead of 19, its second feed-forward product 56 us instead of 74. A convolution
of an even output height does the same over two output rows (``ProductShape.row_stride``
input rows apart): ResNet-18's 3x3 convolutions at 28x28 and 14x14 took about half the time.

A thread configures the tile registers (``ldtilecfg``, about 90 ns) only where they are not
configured as the kernel needs (``sttilecfg`` and a comparison, about 9 ns); the first
configuration in the process asks Linux for the AMX state (``arch_prctl``, Linux 5.16 and
later).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from .cpu import _block_names, _extent, _layout_free, threads_split_rows, tile_order
from .dot_products import (
    DotInstruction,
    _epilogue,
    _inline_around,
    _loop_roles,
    _pack,
    _padded_input,
    _schedule_padding,
    _vectorize_last,
    group_outputs,
    weight_operand,
)

ROWS = 16  # a tile register's rows: the pixels of a tile
ROW_BYTES = 64  # of a tile register's row: a chunk of input channels
MAX_VECTORS = 3  # accumulator tiles: tmm0-2; the input tmm3, weights tmm4-5, the rest tmm6-7
PREFIX = "deploytool_amx"


def _bytes(instruction: DotInstruction) -> int:
    """Of an input element: a 32-bit word holds ``group`` of them."""
    return 4 // instruction.group


def _chunk(instruction: DotInstruction) -> int:
    """Input channels of a tile row."""
    return ROW_BYTES // _bytes(instruction)


@dataclass(frozen=True)
class ProductShape:
    """What one tile's whole reduction covers: a convolution's kernel (1 x 1 for a matrix
    product) over ``channels`` input channels, into ``pixels x 16 vectors`` sums."""

    kernel: tuple[int, int]
    dilation: tuple[int, int]
    stride: int  # between a tile's pixels, in input pixels
    pixels: int
    vectors: int
    channels: int
    conv: bool
    instruction: DotInstruction  # AMX_BF16 or AMX_INT8
    # A row of kernel offsets in one tile row: a stem's few input channels (3, padded to 4)
    # read as kw x channels contiguous values, where the input has no other channels.
    folded: bool = False
    # Output rows of a tile: a 1x1 convolution over rows narrower than a tile takes several
    # whole ones, contiguous in its input (read in place) and in its sums.
    rows: int = 1
    # Sums in four accumulator tiles, from two input tiles and two weight tiles, each tile load
    # feeding two instructions: a matrix product's 32 x 32 (rows 0-15 and 16-31), a
    # convolution's two output rows (``rows`` 2, ``row_stride`` input rows apart) x 32 channels.
    quad: bool = False
    row_stride: int = 1

    @property
    def name(self) -> str:
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        kind = f"conv{kh}x{kw}d{dh}x{dw}s{self.stride}" if self.conv else "matmul"
        return (f"{self.instruction.intrinsic}_{kind}_p{self.pixels}v{self.vectors}"
                f"k{self.channels}" + ("f" if self.folded else "")
                + (f"r{self.rows}" if self.rows > 1 else "")
                + (f"q{self.row_stride}" if self.quad else ""))


def llvm_ir(vectors: int, instruction: DotInstruction) -> str:
    """The LLVM functions the kernel calls, linked into it and inlined: the configuration, and
    the tile instructions for ``vectors`` accumulators (a tile register is an immediate)."""
    c_tiles = range(vectors)
    element = f"i{8 * _bytes(instruction)}"
    functions = instruction.intrinsic

    def weights(a_tile: int, b_tiles: tuple[int, int]) -> str:
        lines = [f"  %a = getelementptr {element}, ptr %data, i32 %i",
                 f"  call void @llvm.x86.tileloadd64(i8 {a_tile}, ptr %a, i64 %rows)",
                 f"  %b0 = getelementptr {element}, ptr %weight, i32 %j"]
        for v in c_tiles:
            b = b_tiles[v % 2]
            if v:
                lines.append(f"  %b{v} = getelementptr i8, ptr %b{v - 1}, i64 %vector")
            lines += [f"  call void @llvm.x86.tileloadd64(i8 {b}, ptr %b{v}, i64 %weightrows)",
                      f"  call void @{instruction.llvm}(i8 {v}, i8 {a_tile}, i8 {b})"]
        return "\n".join(lines)

    stores = "\n".join(
        f"  %c{v} = getelementptr i32, ptr %s, i32 {v * 16}\n"
        f"  call void @llvm.x86.tilestored64(i8 {v}, ptr %c{v}, i64 %stride)" for v in c_tiles)
    zeros = "\n".join(f"  call void @llvm.x86.tilezero(i8 {v})" for v in c_tiles)
    step = ("(ptr %data, i32 %i, i64 %rows, ptr %weight, i32 %j, i64 %weightrows, i64 %vector) "
            "alwaysinline")
    return f"""
declare void @llvm.x86.tileloadd64(i8, ptr, i64)
declare void @llvm.x86.tilestored64(i8, ptr, i64)
declare void @llvm.x86.tilezero(i8)
declare void @{instruction.llvm}(i8, i8, i8)
declare void @llvm.x86.ldtilecfg(ptr)
declare void @llvm.x86.sttilecfg(ptr)
declare i64 @syscall(i64, ...)
@{PREFIX}_permitted = internal global i8 0

define internal i32 @{PREFIX}_configure(i32 %pixels, i32 %restbytes, i32 %quad) alwaysinline {{
entry:
  %want = alloca <64 x i8>, align 64
  %have = alloca <64 x i8>, align 64
  store <64 x i8> zeroinitializer, ptr %want, align 64
  store i8 1, ptr %want
  %p = trunc i32 %pixels to i8
  %rb = trunc i32 %restbytes to i16
  %restwords = lshr i32 %restbytes, 2
  %rp = trunc i32 %restwords to i8
  %has = icmp ne i32 %restbytes, 0
  %q = icmp ne i32 %quad, 0
  %p6h = select i1 %has, i8 %p, i8 0
  %c7h = select i1 %has, i16 64, i16 0
  %p45 = select i1 %q, i8 %p, i8 16
  %p6 = select i1 %q, i8 16, i8 %p6h
  %c6 = select i1 %q, i16 64, i16 %rb
  %p7 = select i1 %q, i8 16, i8 %rp
  %c7 = select i1 %q, i16 64, i16 %c7h
{_config_stores()}
  call void @llvm.x86.sttilecfg(ptr %have)
  %w = load <64 x i8>, ptr %want, align 64
  %h = load <64 x i8>, ptr %have, align 64
  %eq = icmp eq <64 x i8> %w, %h
  %same = call i1 @llvm.vector.reduce.and.v64i1(<64 x i1> %eq)
  br i1 %same, label %done, label %check
check:
  %permitted = load i8, ptr @{PREFIX}_permitted
  %ok = icmp ne i8 %permitted, 0
  br i1 %ok, label %load, label %ask
ask:
  ; arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
  %r = call i64 (i64, ...) @syscall(i64 158, i64 4131, i64 18)
  store i8 1, ptr @{PREFIX}_permitted
  br label %load
load:
  call void @llvm.x86.ldtilecfg(ptr %want)
  br label %done
done:
  ret i32 0
}}
declare i1 @llvm.vector.reduce.and.v64i1(<64 x i1>)

define internal i32 @{functions}_zero{vectors}() alwaysinline {{
{zeros}
  ret i32 0
}}
define internal i32 @{functions}_store{vectors}(ptr %sums, i32 %k, i64 %stride) alwaysinline {{
  %s = getelementptr i32, ptr %sums, i32 %k
{stores}
  ret i32 0
}}
define internal i32 @{functions}_step{vectors}{step} {{
{weights(3, (4, 5))}
  ret i32 0
}}
define internal i32 @{functions}_rest{vectors}{step} {{
{weights(6, (7, 7))}
  ret i32 0
}}
{_quad_ir(element, instruction)}
"""


def _quad_ir(element: str, instruction: DotInstruction) -> str:
    """The functions of a quad tile (ProductShape.quad): sums in tmm0-3 (the first and second
    half of the rows, each by channels 0-15 and 16-31; ``%down`` bytes apart), the input's two
    halves in tmm4-5 (``%half`` bytes apart), the weight's two vectors in tmm6-7."""
    functions, tdp = instruction.intrinsic, instruction.llvm
    products = "\n".join(f"  call void @{tdp}(i8 {c}, i8 {a}, i8 {b})"
                          for c, (a, b) in enumerate([(4, 6), (4, 7), (5, 6), (5, 7)]))
    stores = "\n".join(
        f"  %c{c} = getelementptr i8, ptr %s, i64 {offset}\n"
        f"  call void @llvm.x86.tilestored64(i8 {c}, ptr %c{c}, i64 %stride)"
        for c, offset in enumerate(["0", "64", "%down", "%across"]))
    return f"""
define internal i32 @{functions}_quad(ptr %data, i32 %i, i64 %rows, ptr %weight, i32 %j,
                                      i64 %weightrows, i64 %vector, i64 %half) alwaysinline {{
  %a0 = getelementptr {element}, ptr %data, i32 %i
  %a1 = getelementptr i8, ptr %a0, i64 %half
  %b0 = getelementptr {element}, ptr %weight, i32 %j
  %b1 = getelementptr i8, ptr %b0, i64 %vector
  call void @llvm.x86.tileloadd64(i8 4, ptr %a0, i64 %rows)
  call void @llvm.x86.tileloadd64(i8 6, ptr %b0, i64 %weightrows)
  call void @llvm.x86.tileloadd64(i8 7, ptr %b1, i64 %weightrows)
  call void @llvm.x86.tileloadd64(i8 5, ptr %a1, i64 %rows)
{products}
  ret i32 0
}}
define internal i32 @{functions}_quadzero() alwaysinline {{
{chr(10).join(f"  call void @llvm.x86.tilezero(i8 {c})" for c in range(4))}
  ret i32 0
}}
define internal i32 @{functions}_quadstore(ptr %sums, i32 %k, i64 %stride,
                                           i64 %down) alwaysinline {{
  %s = getelementptr i32, ptr %sums, i32 %k
  %across = add i64 %down, 64
{stores}
  ret i32 0
}}
"""


def _config_stores() -> str:
    """Stores of palette 1's tile shapes into %want: bytes 16 + 2t hold tile t's bytes a row
    (i16), byte 48 + t its rows. tmm0-3 are pixels x 64 bytes (sums, input), tmm4-5 16 x 64
    (weights), tmm6 pixels x the rest's bytes and tmm7 a row per 4 of them x 64 (the last input
    channels; both unused, 0 x 0, where there are none). A quad tile's (_quad_ir): tmm0-5
    pixels x 64 bytes (sums, inputs), tmm6-7 16 x 64 (weights)."""
    shapes = {0: ("64", "%p"), 1: ("64", "%p"), 2: ("64", "%p"), 3: ("64", "%p"),
              4: ("64", "%p45"), 5: ("64", "%p45"), 6: ("%c6", "%p6"), 7: ("%c7", "%p7")}
    lines = []
    for t, (columns, rows) in shapes.items():
        lines += [f"  %col{t} = getelementptr i8, ptr %want, i64 {16 + 2 * t}",
                  f"  store i16 {columns}, ptr %col{t}",
                  f"  %row{t} = getelementptr i8, ptr %want, i64 {48 + t}",
                  f"  store i8 {rows}, ptr %row{t}"]
    return "\n".join(lines)


@functools.cache
def _register(shape: ProductShape) -> None:
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(shape.name, _description(shape), _implementation(shape), override=True)


def _input_extent(shape: ProductShape) -> tuple[int, int]:
    """(rows, pixels) of the input a convolution's tile reads."""
    (kh, kw), (dh, dw) = shape.kernel, shape.dilation
    return ((shape.rows - 1) * shape.row_stride + (kh - 1) * dh + 1,
            (shape.pixels - 1) * shape.stride + (kw - 1) * dw + 1)


def _operand_shapes(shape: ProductShape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of the input and weight regions a tile reads."""
    v, k, g = shape.vectors, shape.channels, shape.instruction.group
    if shape.conv:
        kh, kw = shape.kernel
        return (*_input_extent(shape), k), (v, kh, kw, k // g, 16, g)
    return (shape.pixels, k), (v, k // g, 16, g)


def _description(shape: ProductShape):
    """The products of a tile's whole reduction, as the kernel's block computes them: its
    iteration variables are the block's, a kernel axis of one offset having none (written as
    TVMScript text, as they vary with the shape)."""
    import tvm

    p, v, k, o = shape.pixels, shape.vectors, shape.channels, shape.instruction
    g = o.group
    (kh, kw), (dh, dw), s = shape.kernel, shape.dilation, shape.stride
    a, b = _operand_shapes(shape)
    r = shape.rows
    sums = _sums(shape)
    # in the block's order: spatial axes first
    axes = [("vh", f"T.axis.spatial({r}, h)", r), ("vi", f"T.axis.spatial({p}, i)", p),
            ("vo", f"T.axis.spatial({v * 16}, {'j * 16 + ' if v > 1 else ''}lane)", 0),
            ("vy", f"T.axis.reduce({kh}, y)", kh), ("vx", f"T.axis.reduce({kw}, x)", kw),
            ("vr", f"T.axis.reduce({k}, r)", 0)]
    kept = "\n".join(f"{' ' * 20}{name} = {axis}" for name, axis, n in axes if n != 1)
    y = "vy" if kh > 1 else "0"
    x = "vx" if kw > 1 else "0"
    i = "vi" if p > 1 else "0"
    at = f"vh, {i}, vo" if r > 1 else f"{i}, vo"  # a sum's index
    if shape.conv:
        a_index = (f"{f'vh * {shape.row_stride} + ' if r > 1 else ''}{y} * {dh}, "
                   f"{i} * {s} + {x} * {dw}, vr")
        b_index = f"vo // 16, {y}, {x}, vr // {g}, vo % 16, vr % {g}"
    else:
        a_index, b_index = f"{i}, vr", f"vo // 16, vr // {g}, vo % 16, vr % {g}"
    # a split into one vector is not made (see tile_amx): its loop would not match
    loops = [("y", kh), ("x", kw), ("h", r), ("i", p), ("j", v), ("lane", 16), ("r", k)]
    loops = [(name, n) for name, n in loops if (name not in "jh" or n > 1)
             and (name not in "yx" or shape.conv)]
    extents = ", ".join(str(n) for _, n in loops)
    loops = ", ".join(name for name, _ in loops)
    source = f"""
@T.prim_func(s_tir=True)
def description(a: T.Buffer({a}, "{o.data}", offset_factor=1),
                b: T.Buffer({b}, "{o.weight}", offset_factor=1),
                c: T.Buffer({sums}, "{o.accumulator}", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads({_whole("c", sums)}, {_whole("a", a)}, {_whole("b", b)})
        T.writes({_whole("c", sums)})
        for {loops} in T.grid({extents}):
                with T.sblock("update"):
{kept}
                    c[{at}] = c[{at}] + T.Cast("{o.accumulator}", a[{a_index}]) * T.Cast(
                        "{o.accumulator}", b[{b_index}])
"""
    return tvm.script.from_source(source)


def _implementation(shape: ProductShape):
    """The tile instructions (see llvm_ir): configure, zero the sums, per kernel offset and
    chunk of input channels one input and V weight tiles, store the sums. The tile covers the
    whole reduction, so its sums start at zero in the tile registers: the zeros the block's init
    writes before it are not read (a tile load of what vector stores have just written waits
    for them to reach the cache)."""
    import tvm

    p, v, k, o = shape.pixels, shape.vectors, shape.channels, shape.instruction
    g, n, chunk_channels = o.group, _bytes(o), _chunk(o)
    chunks, rest = divmod(k, chunk_channels)
    (kh, kw), (dh, dw), s = shape.kernel, shape.dilation, shape.stride
    a, b = _operand_shapes(shape)
    if shape.conv:
        a_strides, b_strides = "a0, a1, 1", f"b0, b1, b2, b3, {g}, 1"
        a_at, b_at, words, rows = f"y * {dh} * a0 + x * {dw} * a1", "y * b1 + x * b2", "b3", \
            f"a1 * {s}"
    else:
        a_strides, b_strides = "a0, 1", f"b0, b1, {g}, 1"
        a_at, b_at, words, rows = "0", "0", "b1", "a0"
    functions = o.intrinsic

    suffix, zero, store, half, down = str(v), f"zero{v}", f"store{v}", "", ""
    configured = p * shape.rows
    if shape.quad:  # its functions (_quad_ir) take its second half's offsets in bytes too
        a_below, c_below, configured = _quad_halves(shape)
        suffix, zero, store = "", "quadzero", "quadstore"
        half = f', T.Cast("int64", {a_below} * {n})'
        down = f', T.Cast("int64", {c_below} * 4)'

    def chunk(function: str, first: str) -> str:
        return (f'T.evaluate(T.call_extern("int32", "{functions}_{function}{suffix}", a.data, '
                f'T.Cast("int32", a.elem_offset + {a_at} + ({first}) * {chunk_channels}), '
                f'T.Cast("int64", {rows} * {n}), b.data, T.Cast("int32", b.elem_offset + {b_at} '
                f'+ ({first}) * {chunk_channels // g} * {words}), T.Cast("int64", {words} * {n}), '
                f'T.Cast("int64", b0 * {n}){half}))')

    last = f"\n{' ' * 12}{chunk('rest', str(chunks))}" if rest else ""
    reduction = (f"for y, x in T.grid({kh}, {kw}):\n{' ' * 12}for chunk in T.serial({chunks}):"
                 f"\n{' ' * 16}{chunk('quad' if shape.quad else 'step', 'chunk')}{last}")
    rest_bytes = rest * n
    if shape.folded:  # per kernel row, its kw x k values in one tile row
        reduction = f"for y, x in T.grid({kh}, 1):\n{' ' * 12}{chunk('rest', '0')}"
        rest_bytes = kw * k * n
    sums = _sums(shape)
    # a tile of several whole rows (ProductShape.rows) reads and stores them as one run of
    # pixels, a pixel's stride apart
    c_strides, c_row = ("c0, c1, 1", "c1") if shape.rows > 1 else ("c0, 1", "c0")
    strides = [n for n in f"{a_strides}, {b_strides}, {c_strides}".split(", ")
               if not n.isdigit()]
    declared = "\n    ".join(f"{n} = T.int32()" for n in strides)
    source = f"""
@T.prim_func(s_tir=True)
def implementation(a_handle: T.handle, b_handle: T.handle, c_handle: T.handle) -> None:
    {declared}
    a = T.match_buffer(a_handle, {a}, "{o.data}", strides=[{a_strides}], offset_factor=1)
    b = T.match_buffer(b_handle, {b}, "{o.weight}", strides=[{b_strides}], offset_factor=1)
    c = T.match_buffer(c_handle, {sums}, "{o.accumulator}", strides=[{c_strides}],
                       offset_factor=1)
    with T.sblock("root"):
        T.reads({_whole("c", sums)}, {_whole("a", a)}, {_whole("b", b)})
        T.writes({_whole("c", sums)})
        T.evaluate(T.call_extern("int32", "{PREFIX}_configure", {configured}, {rest_bytes},
                                 {int(shape.quad)}))
        T.evaluate(T.call_extern("int32", "{functions}_{zero}"))
        {reduction}
        T.evaluate(T.call_extern("int32", "{functions}_{store}", c.data,
                                 T.Cast("int32", c.elem_offset),
                                 T.Cast("int64", {c_row} * 4){down}))
"""
    return tvm.script.from_source(source)


def _quad_halves(shape: ProductShape) -> tuple[str, str, int]:
    """A quad tile's second half (a convolution's next output row, a matrix product's rows
    16-31): its input's and its sums' offsets from the first, in elements, as expressions of
    the implementation's strides; and the rows of each of its tiles."""
    if shape.conv:
        return f"{shape.row_stride} * a0", "c0", shape.pixels
    return f"{ROWS} * a0", f"{ROWS} * c0", ROWS


def _sums(shape: ProductShape) -> tuple[int, ...]:
    """The shape of a tile's sums: (rows,) pixels, channels."""
    rows = (shape.rows,) if shape.rows > 1 else ()
    return (*rows, shape.pixels, shape.vectors * 16)


def _whole(name: str, shape: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(f'0:{n}' for n in shape)}]"


def tile_amx(sch, func, names: list[str], main: str, instruction: DotInstruction) -> bool:
    """Schedule ``main`` (conv2d_nhwc or matmul of ``instruction``'s dtypes, a constant weight)
    in AMX tiles; False where it does not fit them (its schedule ``sch`` is then spoilt)."""
    block = sch.get_sblock(main)
    conv = main != "matmul"
    spatial, reduction = _loop_roles(sch, block, 3 if conv else 1)
    width, channels = spatial[-2], spatial[-1]
    group = group_outputs(sch, block, channels, reduction)
    if group % 16 or _extent(sch, reduction[-1]) % instruction.group:
        return False
    weight, constant = weight_operand(sch, func, block, main, instruction)
    if weight is None:
        return False
    # a tile's input is one group's channels: its accumulators stay within one group
    vectors = max(v for v in range(1, MAX_VECTORS + 1) if (group // 16) % v == 0)
    pixels = _pixels(_extent(sch, width))
    if not conv and pixels * 2 <= min(_extent(sch, width), ROWS):
        # rows no tile size divides well (a ViT's 197 tokens) are padded to whole tiles
        sch.pad_einsum(block, [1] * (len(spatial) - 2) + [ROWS, 1, 1])
        spatial, reduction = _loop_roles(sch, block, 1)
        width, channels = spatial[-2], spatial[-1]
        pixels, names = ROWS, _block_names(sch)
    channels_in = _extent(sch, reduction[-1])
    quad = (not conv and _extent(sch, width) % (2 * ROWS) == 0
            and _quad_channels(group, channels_in, instruction))
    if quad:
        pixels, vectors = 2 * ROWS, 2
    shape = _shape(sch, block, conv, pixels, vectors, channels_in, instruction)
    if shape is None:
        return False
    if quad:
        shape = replace(shape, quad=True)
    elif conv and _two_rows(sch, spatial, shape, group):
        vectors, shape = 2, replace(shape, vectors=2, rows=2, quad=True)
    rows_first = threads_split_rows(sch, spatial, reduction)
    _inline_around(sch, names, main)
    padding = _padded_input(sch, main)
    channel_tiles, *channel_vectors = sch.split(channels, [None, vectors, 16] if vectors > 1
                                                else [None, 16])
    width_tiles, width_pixels = sch.split(width, [None, pixels])
    row_loops, tile_rows = spatial[:-2], []
    if shape.rows > 1:  # the height in tiles of whole rows
        height_tiles, height_rows = sch.split(row_loops[-1], [None, shape.rows])
        row_loops, tile_rows = [*row_loops[:-1], height_tiles], [height_rows]
    outer = tile_order(row_loops, width_tiles, channel_tiles, rows_first)
    sch.reorder(*outer, *reduction[:-1], *tile_rows, width_pixels, *channel_vectors,
                reduction[-1])
    _pack(sch, block, weight, main, instruction.group, 16, constant)
    output = _epilogue(sch, main, outer[-1])
    sch.parallel(sch.fuse(*outer))
    first = reduction[0] if conv else width_pixels
    init = sch.decompose_reduction(block, first)
    halves, lanes = sch.split(sch.get_loops(init)[-1], [2, None])
    sch.vectorize(lanes)
    # on a serial loop of two: the code generator drops it from a parallel one, TVM a loop of
    # one
    sch.annotate(halves, "pragma_import_llvm", llvm_ir(vectors, instruction))
    _register(shape)
    sch.tensorize(first, shape.name)
    if output is not None:
        _vectorize_last(sch, output)
    _schedule_padding(sch, padding)
    return True


def _quad_channels(group: int, channels: int, instruction: DotInstruction) -> bool:
    """Whether a product's channels fit quad tiles: (one group's) output channels of whole
    blocks of 32, input channels of whole chunks (no tile registers remain for the rest)."""
    return group % 32 == 0 and channels % _chunk(instruction) == 0


def _two_rows(sch, spatial, shape: ProductShape, group: int) -> bool:
    """Whether a convolution takes quad tiles of two output rows by 32 channels: an even
    height, a tile row per output row (neither ``folded`` nor of several ``rows``)."""
    return (shape.rows == 1 and not shape.folded and _extent(sch, spatial[-3]) % 2 == 0
            and _quad_channels(group, shape.channels, shape.instruction))


def _pixels(width: int) -> int:
    """The most pixels of a row, up to a tile's 16 rows, that divide it."""
    return max(p for p in range(1, min(width, ROWS) + 1) if width % p == 0)


def _shape(sch, block, conv: bool, pixels: int, vectors: int, channels: int,
           instruction: DotInstruction):
    """The ProductShape of the block's tiles: a convolution's kernel, dilation and stride
    read off its input's indices (None where they are not ``h * s + kh * d``)."""
    if not conv:
        return ProductShape((1, 1), (1, 1), 1, pixels, vectors, channels, False, instruction)
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    variables = [v.var for v in stmt.iter_vars]
    inputs = [r for r in stmt.reads if str(r.source.dtype) == instruction.data
              and len(r.region) == 4
              and r.source.name not in _layout_free(sch.mod["main"])]
    if len(inputs) != 1:
        return None
    _, y, x, _ = (r.min for r in inputs[0].region)
    coefficients = [_coefficient(y, variables, 1), _coefficient(y, variables, 4),
                    _coefficient(x, variables, 2), _coefficient(x, variables, 5)]
    if None in coefficients:
        return None
    sh, dh, sw, dw = coefficients
    kernel = (_extent(sch, loops[-3]), _extent(sch, loops[-2]))
    source = [int(n) for n in inputs[0].source.shape]
    folded = (kernel[1] > 1 and dw == 1 and source[-1] == channels
              and kernel[1] * channels * _bytes(instruction) <= ROW_BYTES)
    height, width = _extent(sch, loops[1]), _extent(sch, loops[2])
    rows = 1
    if (kernel, sh, sw) == ((1, 1), 1, 1) and source[1:3] == [height, width] \
            and pixels == width:
        rows = max(r for r in range(1, ROWS // width + 1) if height % r == 0)
    return ProductShape(kernel, (dh, dw), sw, pixels, vectors, channels, True, instruction,
                        folded, rows, row_stride=sh)


def _coefficient(index, variables, which: int) -> int | None:
    """What ``index`` moves by per step of ``variables[which]`` (the others 0), where it
    moves evenly over three steps."""
    from tvm.sym import Analyzer

    def at(step: int) -> int:
        analyzer = Analyzer()
        for k, var in enumerate(variables):
            analyzer.bind(var, step if k == which else 0)
        return int(analyzer.simplify(index))

    first, second, third = at(1) - at(0), at(2) - at(1), at(3) - at(2)
    return first if first == second == third else None
