"""A matrix product's second operand packed by the kernel itself, where it is an activation
(attention's keys and values in bf16) rather than a constant packed at compile time: the tiles
of schedules/dot_products.py and schedules/amx.py read it as ``... (N/16) (K/2) 16 2``, each
16 x 2 block the interleave of two of its rows' 16 values.

TVM vectorizes that interleave element by element (a 16-bit load and insert per value, about 30
us a call of a BERT's attention at 128 tokens, where the products take a few); each block is
instead one LLVM shuffle of the two rows (``vpermt2w``), a tensorized call of an LLVM function
linked into the kernel as the dot-product instructions' are.
"""

from __future__ import annotations

import functools

INTRINSIC = "deploytool_pairs_16x2_bf16"
FUNCTION = "deploytool_pairs16"
_ORDER = ", ".join(f"i32 {lane}, i32 {lane + 16}" for lane in range(16))
LLVM_IR = f"""
define internal i32 @{FUNCTION}(ptr %src, i32 %i, i32 %stride, ptr %dst, i32 %j) alwaysinline {{
  %a = getelementptr i16, ptr %src, i32 %i
  %b = getelementptr i16, ptr %a, i32 %stride
  %x = load <16 x i16>, ptr %a, align 2
  %y = load <16 x i16>, ptr %b, align 2
  %pairs = shufflevector <16 x i16> %x, <16 x i16> %y, <32 x i32> <{_ORDER}>
  %d = getelementptr i16, ptr %dst, i32 %j
  store <32 x i16> %pairs, ptr %d, align 2
  ret i32 0
}}
"""


@functools.cache
def _register() -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def description(src: T.Buffer((2, 16), "bfloat16", offset_factor=1),
                    dst: T.Buffer((16, 2), "bfloat16", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(src[0:2, 0:16])
            T.writes(dst[0:16, 0:2])
            for lane, pair in T.grid(16, 2):
                with T.sblock("pack"):
                    vl, vp = T.axis.remap("SS", [lane, pair])
                    dst[vl, vp] = src[vp, vl]

    @T.prim_func(s_tir=True)
    def implementation(src_handle: T.handle, dst_handle: T.handle) -> None:
        row = T.int32()
        src = T.match_buffer(src_handle, (2, 16), "bfloat16", strides=[row, 1],
                             offset_factor=1)
        dst = T.match_buffer(dst_handle, (16, 2), "bfloat16", offset_factor=1)
        with T.sblock("root"):
            T.reads(src[0:2, 0:16])
            T.writes(dst[0:16, 0:2])
            T.evaluate(T.call_extern("int32", FUNCTION, src.data, T.Cast("int32", src.elem_offset),
                                     T.Cast("int32", row), dst.data,
                                     T.Cast("int32", dst.elem_offset)))

    TensorIntrin.register(INTRINSIC, description, implementation, override=True)


def pack_in_kernel(sch, packed, index_map) -> None:
    """Schedule the block ``packed`` (a cache_read of bf16 ``... K N`` laid out by
    ``index_map`` as ``... (N/16) (K/2) 16 2``): a thread per row of blocks, a shuffle per
    block."""
    sch.transform_block_layout(packed, index_map)
    loops = sch.get_loops(packed)
    sch.parallel(sch.fuse(*loops[:-3]))
    # on a serial loop: the code generator drops it from a parallel one
    sch.annotate(loops[-3], "pragma_import_llvm", LLVM_IR)
    _register()
    sch.tensorize(loops[-2], INTRINSIC)
