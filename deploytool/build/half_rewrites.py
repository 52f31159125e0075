"""The Relax rewrite of a bf16 or fp16 build: each convolution and matrix product by a constant
float32 weight takes its input and weight in the half-width type and sums in float32
(``out_dtype``; see HalfProducts for which convolutions), and in bf16 so does each matrix
product of two activations (attention's); every other operator stays float32: softmax,
normalizations, reductions, elementwise chains.

The input is rounded where the product reads it (the cast fuses into the kernel that produces
it, or into the product's own kernel); the weight is rounded at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schedules.dot_products import (
    LANES,
    extra_columns,
    static_extent,
    tile_padding,
    whole_groups,
)
from .cpu_rewrites import cropped, padded, rewrite_counted, through_transpose


@dataclass(frozen=True)
class HalfProducts:
    """How one half-width precision computes its products."""

    precision: str  # the --precision name
    dtype: str  # the operands' Relax dtype
    pair: int  # input channels are padded to a multiple of this
    tiled: bool  # output channels and width padded for the dot-product tile (dot_products.py)
    grouped: bool  # every grouped and depthwise convolution too (else see takes_convolution)
    activations: bool  # products of two activations too (attention's), packed by the kernel

    def takes_convolution(self, groups: int, weight_shape) -> bool:
        """Whether the rewrite computes a convolution of ``groups`` groups and OIHW
        ``weight_shape`` in the half-width type. The dot-product tile (``tiled``) takes a
        grouped one whose groups' output channels fill whole vectors and whose input channels
        are whole pairs (RegNetX's groups of 16, ResNeXt's of 16 and 32): each vector of
        output channels then sums its own group's input channels."""
        if groups == 1 or self.grouped:
            return True
        return self.tiled and whole_groups(groups, weight_shape, LANES, self.pair)

    def takes_activations(self, columns: int | None) -> bool:
        """Whether the rewrite computes a matrix product of two activations with ``columns``
        output columns (None: unknown) in the half-width type: where padding them to the tile's
        vectors at most doubles them (a product of one column, as MobileViT's, stays float32)."""
        return self.activations and (columns is None or columns >= LANES // 2)


# AVX-512 BF16's vdpbf16ps sums pairs of products into float32 lanes: only a channel sum has the
# pairs; a depthwise convolution stays float32.
BF16_PRODUCTS = HalfProducts("bf16", "bfloat16", 2, True, False, True)
# fp16 (ARM CPUs) sums in float32 too, the operands widened (fcvtl): float16 sums (fmla on 8
# lanes) lost 20 dB of SNR on ResNet-18 (37.8 against 58.5) and changed one of 8 top-1 classes
# of MobileNetV2. Depthwise and grouped convolutions read float16 as well: what fp16 saves is
# memory traffic.
FP16_PRODUCTS = HalfProducts("fp16", "float16", 1, False, True, False)
HALF_PRODUCTS = {h.precision: h for h in (BF16_PRODUCTS, FP16_PRODUCTS)}


def _constant_weight(expr, bindings):
    """The float32 numpy value of a constant weight (followed through a 2-D transpose), or
    None."""
    import tvm

    followed = through_transpose(expr, bindings)
    if followed is None:
        return None
    source, transposed = followed
    if not isinstance(source, tvm.ir.expr.Constant) or str(source.ty.dtype) != "float32":
        return None
    value = source.value.numpy()
    return value.T if transposed else value


def _half_const(values, half: HalfProducts):
    import ml_dtypes
    import numpy as np
    from tvm import relax

    numpy_type = ml_dtypes.bfloat16 if half.dtype == "bfloat16" else np.float16
    return relax.const(np.ascontiguousarray(values).astype(numpy_type))


def _conv2d(call, bindings, half: HalfProducts):
    import numpy as np
    from tvm import relax

    attrs = call.attrs
    weight = _constant_weight(call.args[1], bindings)
    groups = int(attrs.groups)
    if weight is None or weight.ndim != 4 or not half.takes_convolution(groups, weight.shape) \
            or str(call.args[0].ty.dtype) != "float32" or attrs.data_layout != "NCHW" \
            or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW":
        return None
    channels, width = weight.shape[0], static_extent(call.ty.shape[3])
    wider, padded_channels, extra = 0, channels, 0
    if half.tiled and groups == 1:  # a grouped one's groups are whole vectors and pairs
        # Input channels padded to pairs; output channels and the output's width padded to what
        # the tile takes well (schedules.dot_products.padded_extents: sixteens of channels at
        # least), the extra outputs sliced off; so the tile takes every convolution (a stem's 3
        # channels, RegNetX's 400 at 7x7).
        wider, padded_channels = tile_padding(width, channels)
        extra = -weight.shape[1] % half.pair
    more = padded_channels - channels
    weight = np.pad(weight, [(0, more), (0, extra), (0, 0), (0, 0)])
    data = padded(relax.op.astype(call.args[0], half.dtype), 4, {1: extra})
    top, left, bottom, right = (int(p) for p in attrs.padding)
    right += wider * int(attrs.strides[1])  # zeros the extra output columns read
    out = relax.op.nn.conv2d(data, _half_const(weight, half), strides=attrs.strides,
                             padding=[top, left, bottom, right], dilation=attrs.dilation,
                             groups=groups, out_dtype="float32")
    return cropped(out, {1: channels if more else None, 3: width if wider else None})


def _matmul(call, bindings, half: HalfProducts):
    import numpy as np
    from tvm import relax

    weight = _constant_weight(call.args[1], bindings)
    if weight is None and half.activations \
            and _constant_weight(call.args[0], bindings) is None:
        return _activation_matmul(call, half)
    if weight is None or weight.ndim != 2 or weight.shape[0] % half.pair \
            or str(call.args[0].ty.dtype) != "float32":
        return None
    columns = weight.shape[1]
    more = extra_columns(call, columns) if half.tiled else 0  # zero columns, sliced off
    weight = np.pad(weight, [(0, 0), (0, more)])
    out = relax.op.matmul(relax.op.astype(call.args[0], half.dtype), _half_const(weight, half),
                          out_dtype="float32")
    return cropped(out, {len(call.ty.shape) - 1: columns if more else None})


def _activation_matmul(call, half: HalfProducts):
    """A product of two float32 activations of the same batch dimensions (attention's scores
    and weighted sum) in the half-width type: the reduction padded to pairs, the columns as a
    weight's (:func:`extra_columns`), with zeros, the extra columns sliced off."""
    from tvm import relax

    a, b = call.args
    if a.ty.shape is None or b.ty.shape is None:
        return None
    # a Relax shape does not slice
    a_shape, b_shape = list(a.ty.shape), list(b.ty.shape)
    if len(a_shape) != len(b_shape) or len(a_shape) < 2 \
            or str(a.ty.dtype) != "float32" or str(b.ty.dtype) != "float32" \
            or any(str(x) != str(y) for x, y in zip(a_shape[:-2], b_shape[:-2], strict=True)):
        return None
    rows, reduction, columns = (static_extent(d) for d in (a_shape[-2], a_shape[-1],
                                                            b_shape[-1]))
    if None in (rows, reduction, columns) or not half.takes_activations(columns):
        return None
    rank, odd, more = len(a_shape), reduction % half.pair, extra_columns(call, columns)
    data = padded(relax.op.astype(a, half.dtype), rank, {rank - 1: odd})
    weight = padded(relax.op.astype(b, half.dtype), rank, {rank - 2: odd, rank - 1: more})
    out = relax.op.matmul(data, weight, out_dtype="float32")
    return cropped(out, {rank - 1: columns if more else None})


def half_products(mod, half: HalfProducts):
    """``mod`` with its convolutions and matrix products by constant weights in ``half`` (see
    the module's docstring).

    Returns
    -------
    tuple of (tvm.IRModule, int)
        The module, and how many products became half-width ones.
    """
    from tvm import relax

    mod, count = rewrite_counted(mod, {
        "relax.nn.conv2d": lambda call, bindings: _conv2d(call, bindings, half),
        "relax.matmul": lambda call, bindings: _matmul(call, bindings, half)})
    # each product casts its own input: CSE leaves one cast where several read one tensor (a
    # transformer's query, key and value)
    mod = relax.transform.EliminateCommonSubexpr()(mod)
    return relax.transform.DeadCodeElimination()(mod), count


def count_half_products(mod, half: HalfProducts) -> int:
    """How many convolutions and matrix products of ``mod`` take ``half``'s inputs."""
    from tvm import relax

    ops = ("relax.nn.conv2d", "relax.matmul")
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) in ops \
                and str(expr.args[0].ty.dtype) == half.dtype:
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return len(found)
