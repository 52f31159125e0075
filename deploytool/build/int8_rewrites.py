"""Relax rewrites of a quantized (QDQ) model: each convolution and matrix product whose input is a
dequantized 8-bit activation and whose weight is a constant dequantized per channel becomes an
integer product with int32 accumulation, scaled back to float in its epilogue; a depthwise
convolution reads the 8-bit input and sums in float32.

The QDQ model computes ``conv(sx * (xq - zx), sw * wq)``; the rewrite computes
``sx * sw * (conv(xq, wq) - zx * sum(wq))`` with 8-bit operands and an int32 sum, which is the
same number (the integer sum is exact). Padding reads ``zx``, the zero point, as the QDQ model's
padding reads 0.0.
"""

from __future__ import annotations

import functools

from ..schedules.dot_products import extra_columns, static_extent, tile_padding, whole_groups
from .cpu_rewrites import bound_value, cropped, rewrite_calls, rewrite_counted, through_transpose

CHANNEL_GROUP = 4  # input channels that one VNNI or dot-product lane sums
MAX_FOLDS = 8  # rounds of folded_constants: each folds one more step of every chain


def _constant(expr, bindings):
    import tvm

    expr = bound_value(expr, bindings)
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _is(expr, name: str) -> bool:
    import tvm
    from tvm import relax

    return (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == f"relax.{name}")


def _activation(expr, bindings):
    """(xq, scale, zero point) of an 8-bit activation dequantized per tensor, or None."""
    source = bound_value(expr, bindings)
    if not _is(source, "dequantize"):
        return None
    xq, scale, zero = source.args
    scale, zero = _constant(scale, bindings), _constant(zero, bindings)
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 \
            or str(xq.ty.dtype) not in ("uint8", "int8"):
        return None
    return xq, float(scale.reshape(())), int(zero.reshape(()))


def _weight(expr, bindings, out_axis: int):
    """(int8 weight, float32 per-channel scale along ``out_axis``) of a constant weight
    dequantized symmetrically, as a numpy pair; or None. A transposed 2-D weight is followed."""
    import numpy as np

    followed = through_transpose(expr, bindings)
    if followed is None:
        return None
    source, transposed = followed
    if not _is(source, "dequantize"):
        return None
    values, scale, zero = (_constant(a, bindings) for a in source.args)
    if values is None or scale is None or zero is None or values.dtype != np.int8 \
            or np.any(zero != 0):
        return None
    axis = int(source.attrs.axis) % values.ndim
    if transposed:
        values, axis = values.T, 1 - axis
    if scale.size != 1 and axis != out_axis % values.ndim:
        return None
    channels = values.shape[out_axis]
    return values, np.broadcast_to(scale.astype("float32").reshape(-1), (channels,)).copy()


def _qdq_conv2d(call, bindings):
    """((xq, sx, zx), (wq, sw)) of a QDQ 2-D convolution (NCHW, OIHW): its dequantized 8-bit
    activation and constant weight (see _activation, _weight); None for another convolution."""
    attrs = call.attrs
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW":
        return None
    activation = _activation(call.args[0], bindings)
    weight = _weight(call.args[1], bindings, 0)
    return None if activation is None or weight is None else (activation, weight)


def takes_grouped(groups: int, weight_shape, lanes: int) -> bool:
    """Whether a grouped convolution of OIHW ``weight_shape`` becomes an integer product where
    the target's dot-product tiles have vectors of ``lanes`` (0: none; see whole_groups)."""
    return lanes > 0 and whole_groups(groups, weight_shape, lanes, CHANNEL_GROUP)


def _conv2d(call, bindings, lanes: int = 0):
    """The integer form of a QDQ 2-D convolution of one group, or of several where
    takes_grouped with ``lanes``; else None (other grouped ones: see _depthwise_conv2d)."""
    import numpy as np
    from tvm import relax

    attrs = call.attrs
    operands = _qdq_conv2d(call, bindings)
    groups = int(attrs.groups)
    if operands is None or (groups > 1 and not takes_grouped(groups, operands[1][0].shape,
                                                             lanes)):
        return None
    (xq, sx, zx), (wq, sw) = operands
    top, left, bottom, right = (int(p) for p in attrs.padding)
    # Input channels padded to a multiple of CHANNEL_GROUP; output channels and the output's
    # width to what the integer tile takes well (padded_extents: sixteens of channels at least),
    # zero weights, the extra outputs sliced off (a stem's 3 channels, MobileNetV2's 24). A
    # grouped one's groups are whole vectors and words already.
    channels, width = wq.shape[0], static_extent(call.ty.shape[3])
    wider, padded_channels = tile_padding(width, channels) if groups == 1 else (0, channels)
    extra, more = -wq.shape[1] % CHANNEL_GROUP, padded_channels - channels
    wq = np.pad(wq, [(0, more), (0, extra), (0, 0), (0, 0)])
    sw = np.pad(sw, [(0, more)])
    if extra or (zx and any((top, left, bottom, right))):
        pads = [top, bottom, left, right] if zx else [0, 0, 0, 0]
        xq = relax.op.nn.pad(xq, [0, 0, 0, extra, *pads], pad_value=float(zx))
        if zx:
            top = left = bottom = right = 0
    right += wider * int(attrs.strides[1])  # the extra output columns, sliced off, read zeros
    acc = relax.op.nn.conv2d(xq, relax.const(wq), strides=attrs.strides,
                             padding=[top, left, bottom, right], dilation=attrs.dilation,
                             groups=attrs.groups, out_dtype="int32")
    shape = (1, -1, 1, 1)
    correction = zx * wq.astype("int32").sum(axis=(1, 2, 3))
    scaled = _scaled(acc, correction.reshape(shape), (np.float32(sx) * sw).reshape(shape))
    return cropped(scaled, {1: channels if more else None, 3: width if wider else None})


def _depthwise_conv2d(call, bindings):
    """A QDQ depthwise convolution that reads its 8-bit input and sums in float32:
    ``conv(xq - zx, sx * sw * wq)``; None for any other call. With one input channel per output
    there is no channel sum for a dot-product instruction, and the float32 depthwise tile ran
    MobileNetV2's faster than widened 8-bit values did; reading the 8-bit input lets the kernel
    before it write 8 bits instead of float32: MobileNetV2's int8 ran 1.17x faster."""
    import numpy as np
    from tvm import relax

    attrs = call.attrs
    operands = _qdq_conv2d(call, bindings)
    if operands is None or int(attrs.groups) == 1:
        return None
    (xq, sx, zx), (wq, sw) = operands
    if wq.shape[1] != 1:
        return None  # RegNetX's groups of 16 channels ran 1.08x slower reading 8 bits
    weight = (wq.astype("float32") * (np.float32(sx) * sw).reshape(-1, 1, 1, 1))
    top, left, bottom, right = (int(p) for p in attrs.padding)
    if zx and any((top, left, bottom, right)):  # the padding reads the zero point
        xq = relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx))
        top = left = bottom = right = 0
    out = relax.op.nn.conv2d(xq, relax.const(weight), strides=attrs.strides,
                             padding=[top, left, bottom, right], dilation=attrs.dilation,
                             groups=attrs.groups, out_dtype="float32")
    if zx:
        correction = zx * weight.sum(axis=(1, 2, 3))
        out = relax.op.subtract(out, relax.const(correction.reshape(1, -1, 1, 1)))
    return out


def _matmul(call, bindings):
    """The integer form of a QDQ matrix product by a constant 2-D weight, or None."""
    import numpy as np
    from tvm import relax

    activation = _activation(call.args[0], bindings)
    weight = _weight(call.args[1], bindings, 1)
    if activation is None or weight is None or weight[0].ndim != 2:
        return None
    (xq, sx, zx), (wq, sw) = activation, weight
    columns = wq.shape[1]
    extra = extra_columns(call, columns)  # zero columns, sliced off
    wq, sw = np.pad(wq, [(0, 0), (0, extra)]), np.pad(sw, [(0, extra)])
    acc = relax.op.matmul(xq, relax.const(np.ascontiguousarray(wq)), out_dtype="int32")
    correction = zx * wq.astype("int32").sum(axis=0)
    scaled = _scaled(acc, correction, np.float32(sx) * sw)
    return cropped(scaled, {len(call.ty.shape) - 1: columns if extra else None})


def _scaled(acc, correction, scale):
    """``(acc - correction) * scale`` in float32, as ``acc * scale - correction * scale`` (which
    :func:`folded_constants` merges with the bias and the next quantization's scale); the
    subtraction is left out where it is 0."""
    import numpy as np
    from tvm import relax

    scaled = relax.op.multiply(relax.op.astype(acc, "float32"),
                               relax.const(scale.astype("float32")))
    if not np.any(correction):
        return scaled
    shift = -(correction.astype("float64") * scale.astype("float64"))
    return relax.op.add(scaled, relax.const(shift.astype("float32")))


def folded_constants(mod):
    """``mod`` with chains of float32 multiplications and additions by constants folded, where
    each intermediate value is read once: ``(z * a + b) * k`` becomes ``z * (a k) + b k`` and
    ``(z + a) + b`` becomes ``z + (a + b)``. An integer product's epilogue scales its sums,
    subtracts the zero point's correction, adds the bias and multiplies by the next
    quantization's reciprocal scale: one multiply-add remains of four operations, and float32
    rounding moves the result by an ulp."""
    from tvm import relax

    for _ in range(MAX_FOLDS):
        fold = functools.partial(_fold, shared=_read_more_than_once(mod))
        mod, folds = rewrite_counted(mod, {"relax.multiply": fold, "relax.add": fold})
        mod = relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(mod))
        if not folds:
            break
    return mod


def _constant_operand(call, bindings):
    """(the other operand, the float32 constant as a numpy array) of a binary call, or None."""
    for constant, other in ((call.args[1], call.args[0]), (call.args[0], call.args[1])):
        value = _computed(constant, bindings)
        if value is not None and value.dtype == "float32":
            return other, value
    return None


def _computed(expr, bindings):
    """The value of a constant, or of a dequantize (a QDQ model's bias) or reshape of one, as a
    numpy array; None for anything else."""
    value = _constant(expr, bindings)
    if value is not None:
        return value
    source = bound_value(expr, bindings)
    if _is(source, "reshape"):
        value = _computed(source.args[0], bindings)
        try:
            return None if value is None else value.reshape([int(d) for d in source.ty.shape])
        except (TypeError, ValueError):  # a symbolic shape
            return None
    if not _is(source, "dequantize") or str(source.attrs.out_dtype) != "float32":
        return None
    values, scale, zero = (_constant(a, bindings) for a in source.args)
    if values is None or scale is None or zero is None:
        return None
    shape = [1] * values.ndim
    if scale.size > 1 or zero.size > 1:
        shape[int(source.attrs.axis) % values.ndim] = -1
    shifted = values.astype("float64") - zero.astype("float64").reshape(shape)
    return (shifted * scale.astype("float64").reshape(shape)).astype("float32")


def _fold(call, bindings, shared: frozenset):
    """The folded form of a multiplication or addition by a constant whose other operand is a
    multiplication or addition by a constant read nowhere else (see folded_constants), or
    None."""
    from tvm import relax

    if str(getattr(call.ty, "dtype", "")) != "float32":
        return None
    outer = _constant_operand(call, bindings)
    if outer is None or outer[0] in shared:
        return None
    inner, k = outer
    source = bound_value(inner, bindings)
    multiply = _is(call, "multiply")
    if not (_is(source, "add") or (multiply and _is(source, "multiply"))):
        return None
    operand = _constant_operand(source, bindings)
    if operand is None:
        return None
    z, a = operand
    if not multiply:  # (z + a) + k
        return relax.op.add(z, relax.const((a + k).astype("float32")))
    if _is(source, "multiply"):  # (z * a) * k
        return relax.op.multiply(z, relax.const((a * k).astype("float32")))
    return relax.op.add(relax.op.multiply(z, relax.const(k)),  # (z + a) * k
                        relax.const((a * k).astype("float32")))


def _per_tensor(call, bindings):
    """(scale, zero point) of a per-tensor quantize or dequantize, as numbers; or None."""
    import numpy as np

    scale, zero = (_constant(a, bindings) for a in call.args[1:])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    return np.float32(scale.reshape(())), int(zero.reshape(()))


def _rounded(x, scale, zero: int, dtype: str, less: int = 0):
    """The quantized value of float32 ``x``, less ``less``, as a float: clip(round(x / scale) +
    zero) to ``dtype``'s range, the same rounding as TVM's own legalization; all of it less
    ``less`` (a dequantize's zero point: the addition of ``zero - less`` is left out where 0)."""
    import numpy as np
    from tvm import relax

    info = np.iinfo(dtype)
    # times the reciprocal: a vector division cost MobileNetV2's 1x1 convolutions at 112x112
    # more than their products; the two differ by an ulp, which moves a rounding step only at
    # an exact tie
    inverse = relax.const(np.float32(1) / scale, "float32")
    shifted = relax.op.round(relax.op.multiply(x, inverse))
    if zero != less:
        shifted = relax.op.add(shifted, relax.const(float(zero - less), "float32"))
    return relax.op.clip(shifted, int(info.min) - less, int(info.max) - less)


def _elementwise(call, bindings, shared: frozenset = frozenset()):
    """A per-tensor quantize or dequantize as the elementwise operations it computes, which
    layout conversion and fusion see through. A dequantize of a quantize read by nothing else
    (not in ``shared``) stays in float: the 8-bit value is an integer a float holds exactly, so
    the casts to 8 bits and back (three vector conversions of each kernel's epilogue) change
    nothing. A quantized tensor read elsewhere too (by an integer product) stays 8-bit: its
    float source would have to be kept, 4 bytes an element."""
    from tvm import relax

    params = _per_tensor(call, bindings)
    if params is None:
        return None
    (scale, zero), x = params, call.args[0]
    if call.op.name == "relax.dequantize":
        if str(call.attrs.out_dtype) != "float32" or str(x.ty.dtype) not in ("uint8", "int8"):
            return None
        source = bound_value(x, bindings)
        quantized = _per_tensor(source, bindings) if _is(source, "quantize") else None
        if quantized is not None and x not in shared \
                and str(source.args[0].ty.dtype) == "float32":
            shifted = _rounded(source.args[0], *quantized, str(source.attrs.out_dtype), less=zero)
        else:
            shifted = relax.op.astype(relax.op.subtract(
                relax.op.astype(x, "int32"), relax.const(zero, "int32")), "float32")
        return relax.op.multiply(shifted, relax.const(scale, "float32"))
    dtype = str(call.attrs.out_dtype)
    if dtype not in ("uint8", "int8") or str(x.ty.dtype) != "float32":
        return None
    return relax.op.astype(_rounded(x, scale, zero, dtype), dtype)


def integer_products(mod, grouped_lanes: int = 0):
    """``mod`` with each QDQ convolution and matrix product by a constant weight computed in
    integers (see the module's docstring); the others, and every other operator, unchanged.
    ``grouped_lanes``: the narrowest vector of the target's dot-product tiles, which take
    grouped convolutions too (see takes_grouped); 0 without one, where the float32 grouped tile
    is the faster.

    Returns
    -------
    tuple of (tvm.IRModule, int)
        The module, and how many products became integer ones.
    """
    from tvm import relax

    mod, count = rewrite_counted(mod, {
        "relax.nn.conv2d": lambda call, bindings: _conv2d(call, bindings, grouped_lanes),
        "relax.matmul": _matmul})
    mod = rewrite_calls(mod, {"relax.nn.conv2d": _depthwise_conv2d})
    mod = relax.transform.DeadCodeElimination()(mod)  # the dequantized inputs they replaced
    shared = _read_more_than_once(mod)
    elementwise = {"relax.quantize": _elementwise,
                   "relax.dequantize": lambda call, bindings: _elementwise(call, bindings, shared)}
    return folded_constants(rewrite_calls(mod, elementwise)), count


def _read_more_than_once(mod) -> frozenset:
    """The variables of ``mod``'s functions that more than one expression reads."""
    from collections import Counter

    from tvm import relax

    reads: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call):
            reads.update(a for a in expr.args if isinstance(a, relax.Var))
        elif isinstance(expr, relax.Tuple):
            reads.update(f for f in expr.fields if isinstance(f, relax.Var))
        elif isinstance(expr, relax.SeqExpr) and isinstance(expr.body, relax.Var):
            reads[expr.body] += 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return frozenset(var for var, count in reads.items() if count > 1)

