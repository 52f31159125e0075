"""The Relax rewrite of a bf16 build: each convolution (of one group) and matrix product by a
constant float32 weight takes its input and weight in bfloat16 and sums in float32
(``out_dtype``); every other operator stays float32: depthwise and grouped convolutions,
softmax, normalizations, reductions, products of two activations.

The input is rounded to bfloat16 where the product reads it (the cast fuses into the kernel
that produces it, or into the product's own kernel); the weight is rounded at compile time.
"""

from __future__ import annotations

from ..schedules.dot_products import extra_columns, static_extent, tile_padding
from .cpu_rewrites import cropped, rewrite_counted, through_transpose

PAIR = 2  # input channels that one vdpbf16ps lane sums
BF16 = "bfloat16"


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


def _bf16_const(values):
    import ml_dtypes
    import numpy as np
    from tvm import relax

    return relax.const(np.ascontiguousarray(values).astype(ml_dtypes.bfloat16))


def _conv2d(call, bindings):
    import numpy as np
    from tvm import relax

    attrs = call.attrs
    weight = _constant_weight(call.args[1], bindings)
    if weight is None or weight.ndim != 4 or int(attrs.groups) != 1 \
            or str(call.args[0].ty.dtype) != "float32" or attrs.data_layout != "NCHW" \
            or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW":
        return None
    # Input channels padded to pairs; output channels and the output's width padded to what
    # the bf16 tile takes well (schedules.dot_products.padded_extents: sixteens of channels at
    # least), the extra outputs sliced off; so the tile takes every convolution (a stem's 3
    # channels, RegNetX's 400 at 7x7).
    channels, width = weight.shape[0], static_extent(call.ty.shape[3])
    wider, padded_channels = tile_padding(width, channels)
    extra, more = -weight.shape[1] % PAIR, padded_channels - channels
    weight = np.pad(weight, [(0, more), (0, extra), (0, 0), (0, 0)])
    data = relax.op.astype(call.args[0], BF16)
    if extra:
        data = relax.op.nn.pad(data, [0, 0, 0, extra, 0, 0, 0, 0])
    top, left, bottom, right = (int(p) for p in attrs.padding)
    right += wider * int(attrs.strides[1])  # zeros the extra output columns read
    out = relax.op.nn.conv2d(data, _bf16_const(weight), strides=attrs.strides,
                             padding=[top, left, bottom, right], dilation=attrs.dilation,
                             groups=1, out_dtype="float32")
    return cropped(out, {1: channels if more else None, 3: width if wider else None})


def _matmul(call, bindings):
    import numpy as np
    from tvm import relax

    weight = _constant_weight(call.args[1], bindings)
    if weight is None or weight.ndim != 2 or weight.shape[0] % PAIR \
            or str(call.args[0].ty.dtype) != "float32":
        return None
    columns = weight.shape[1]
    more = extra_columns(call, columns)  # zero columns, sliced off
    weight = np.pad(weight, [(0, 0), (0, more)])
    out = relax.op.matmul(relax.op.astype(call.args[0], BF16), _bf16_const(weight),
                          out_dtype="float32")
    return cropped(out, {len(call.ty.shape) - 1: columns if more else None})


def bf16_products(mod):
    """``mod`` with its convolutions and matrix products by constant weights in bfloat16 (see
    the module's docstring).

    Returns
    -------
    tuple of (tvm.IRModule, int)
        The module, and how many products became bf16 ones.
    """
    from tvm import relax

    mod, count = rewrite_counted(mod, {"relax.nn.conv2d": _conv2d, "relax.matmul": _matmul})
    return relax.transform.DeadCodeElimination()(mod), count


def count_bf16_products(mod) -> int:
    """How many convolutions and matrix products of ``mod`` take bfloat16 inputs."""
    from tvm import relax

    ops = ("relax.nn.conv2d", "relax.matmul")
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) in ops \
                and str(expr.args[0].ty.dtype) == BF16:
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return len(found)
