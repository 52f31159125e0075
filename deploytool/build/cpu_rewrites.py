"""Relax rewrites before the CPU build's fusion: each makes the default schedules' kernels
faster, and none changes what the model computes beyond rounding."""

from __future__ import annotations

# Convolutions are computed channels-last (transposes at the edges keep the model's own layout):
# the schedules then vectorize over channels. Tuning and builds both use it, so records match.
CONV2D_LAYOUT = ["NHWC", "HWIO"]


def bound_value(expr, bindings):
    """The expression ``expr`` stands for: through the chain of variables it is bound to."""
    from tvm import relax

    while isinstance(expr, relax.Var) and expr in bindings:
        expr = bindings[expr]
    return expr


def from_constants(expr, bindings) -> bool:
    """Whether ``expr`` is computed from constants alone (a weight behind a layout change),
    which folds at compile time."""
    import tvm
    from tvm import relax

    expr = bound_value(expr, bindings)
    if isinstance(expr, tvm.ir.expr.Constant):
        return True
    return (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
            and all(from_constants(a, bindings) for a in expr.args
                    if not isinstance(a, relax.expr.ShapeExpr)))


def through_transpose(expr, bindings):
    """(the value ``expr`` stands for, followed through a transpose of a 2-D tensor, and whether
    it was transposed); None through another permutation. A weight that a matrix product reads
    transposed (ONNX's Gemm) is a constant behind one."""
    import tvm
    from tvm import relax

    source = bound_value(expr, bindings)
    if not (isinstance(source, relax.Call) and isinstance(source.op, tvm.ir.Op)
            and source.op.name == "relax.permute_dims" and len(source.args[0].ty.shape) == 2):
        return source, False
    axes = source.attrs.axes
    if axes is None or [int(a) for a in axes] != [1, 0]:
        return None
    return bound_value(source.args[0], bindings), True


def padded(x, rank: int, extra: dict):
    """``x`` (of ``rank`` axes) padded with ``extra[axis]`` zeros at the end of each axis whose
    extra is not 0 (a product's operand padded to its tile); ``x`` itself when none is."""
    from tvm import relax

    widths = [0] * (2 * rank)
    for axis, count in extra.items():
        widths[2 * axis + 1] = count
    return relax.op.nn.pad(x, widths) if any(widths) else x


def cropped(out, ends: dict):
    """``out`` sliced to ``ends[axis]`` along each axis whose end is not None (a padded
    product's extra outputs); ``out`` itself when none is."""
    from tvm import relax

    kept = {axis: end for axis, end in ends.items() if end is not None}
    if not kept:
        return out
    return relax.op.strided_slice(out, axes=list(kept), begin=[0] * len(kept),
                                  end=list(kept.values()))


def rewrite_calls(mod, rewrites: dict):
    """``mod`` with each call of an operator in ``rewrites`` replaced by what its rewrite
    returns for it (unless None)."""
    import tvm
    from tvm import relax

    mod = mod.clone()  # the caller's module stays as it was
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        bindings = relax.analysis.get_var2val(func)

        @relax.expr_functor.mutator
        class Rewrite(relax.PyExprMutator):
            def visit_call_(self, call, bindings=bindings):
                call = super().visit_call_(call)
                rewrite = isinstance(call.op, tvm.ir.Op) and rewrites.get(call.op.name)
                new = rewrite(call, bindings) if rewrite else None
                return call if new is None else new

        mod[gv] = Rewrite(mod).visit_expr(func)
    return mod


def rewrite_counted(mod, rewrites: dict):
    """:func:`rewrite_calls`, and how many calls it replaced.

    Returns
    -------
    tuple of (tvm.IRModule, int)
    """
    count = 0

    def counted(rewrite):
        def run(call, bindings):
            nonlocal count
            new = rewrite(call, bindings)
            count += new is not None
            return new

        return run

    mod = rewrite_calls(mod, {name: counted(rewrite) for name, rewrite in rewrites.items()})
    return mod, count


def channels_last(mod):
    """``mod`` with its 2-D convolutions channels-last (CONV2D_LAYOUT); unchanged when it has
    none or when TVM cannot convert it (its ConvertLayout failed on a transformer, which has no
    convolution)."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(conv2d):
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    if not found:
        return mod
    try:
        return relax.transform.ConvertLayout({"relax.nn.conv2d": CONV2D_LAYOUT})(mod)
    except Exception:  # TVM's layout inference does not cover every operator
        return mod


def clip_as_bounds(mod):
    """``mod`` with each ``clip(x, lo, hi)`` of constant bounds written ``minimum(maximum(x, lo),
    hi)``, which TVM's layout conversion sees through (it has no layout rule for clip): the
    hardswish and hardsigmoid activations of MobileNetV3 were transposed to NCHW and back around
    each clip, 4 of its 5 costliest kernels (torchvision's MobileNetV3-Small at 64x64)."""
    import tvm
    from tvm import relax

    clip = tvm.ir.Op.get("relax.clip")

    @relax.expr_functor.mutator
    class Bounds(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op) or not call.op.same_as(clip):
                return call
            x, lo, hi = call.args
            dtype = str(getattr(x.ty, "dtype", ""))
            if not dtype.startswith("float") or not all(
                    isinstance(b, tvm.tirx.FloatImm | tvm.tirx.IntImm) for b in (lo, hi)):
                return call
            lo, hi = (relax.const(float(b.value), dtype) for b in (lo, hi))
            return relax.op.minimum(relax.op.maximum(x, lo), hi)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = Bounds(mod).visit_expr(func)
    return mod


# Output channels of a convolution are padded with zero weights to a multiple of this, where
# they are not one (the slice back to the model's channels runs in the kernel's epilogue): the
# register tiles then vectorize them (see pad_output_channels).
CHANNEL_MULTIPLE = 8


def pad_output_channels(mod):
    """``mod`` with each channels-last convolution (one group, a constant weight) whose output
    channels are not a multiple of CHANNEL_MULTIPLE computed with its weight padded to one,
    then sliced back: ``strided_slice(conv2d(x, pad(w)))``. The padding folds into the weight
    at compile time, the slice into the kernel's epilogue. Unpadded, no vector of channels
    divides such a convolution's 12 channels, and it took MetaSchedule's sampled schedule: a
    3x3 convolution from 3 to 12 channels at 64x64 ran at 6 GFLOP/s on one Zen 4 core."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        bindings = relax.analysis.get_var2val(func)

        @relax.expr_functor.mutator
        class Pad(relax.PyExprMutator):
            def visit_call_(self, call, bindings=bindings):
                call = super().visit_call_(call)
                if not isinstance(call.op, tvm.ir.Op) or not call.op.same_as(conv2d):
                    return call
                attrs = call.attrs
                weight = call.args[1]
                shape = weight.ty.shape
                if (int(attrs.groups) != 1 or attrs.kernel_layout != "HWIO"
                        or attrs.out_layout != "NHWC" or shape is None
                        or not all(isinstance(d, tvm.tirx.IntImm) for d in shape.values)
                        or not from_constants(weight, bindings)):
                    return call
                channels = int(shape.values[3])
                wide = -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
                if wide == channels:
                    return call
                weight = padded(weight, 4, {3: wide - channels})
                padded_conv = self.builder_.normalize(relax.Call(call.op, [call.args[0], weight],
                                                                 attrs))
                return cropped(padded_conv, {3: channels})

        mutator = Pad(mod)
        mod[gv] = mutator.visit_expr(func)
    return mod


def batch_norm_as_scale_shift(mod):
    """``mod`` with each inference batch norm of constant statistics written ``x * scale +
    shift``, the two folded at compile time (in float64). TVM's legalization computes
    ``(x - mean) / sqrt(var + eps) * gamma + beta`` for every element: DenseNet-121's
    normalizations, which follow concatenations and so fold into no convolution, each took a
    square root and a division per element."""
    import numpy as np
    import tvm
    from tvm import relax

    batch_norm = tvm.ir.Op.get("relax.nn.batch_norm")

    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        bindings = relax.analysis.get_var2val(func)

        def constant(expr, bindings=bindings):
            expr = bound_value(expr, bindings)
            return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None

        @relax.expr_functor.mutator
        class ScaleShift(relax.PyExprMutator):
            def visit_call_(self, call):
                call = super().visit_call_(call)
                if not isinstance(call.op, tvm.ir.Op) or not call.op.same_as(batch_norm) \
                        or bool(call.attrs.training):
                    return call
                x, *params = call.args
                gamma, beta, mean, var = (constant(p) for p in params)
                rank = len(getattr(x.ty, "shape", None) or [])
                if any(p is None or p.ndim != 1 for p in (gamma, beta, mean, var)) or not rank:
                    return call
                axis = int(call.attrs.axis) % rank
                gamma = gamma if call.attrs.scale else np.ones_like(gamma)
                beta = beta if call.attrs.center else np.zeros_like(beta)
                scale = gamma.astype("float64") / np.sqrt(var.astype("float64")
                                                          + float(call.attrs.epsilon))
                shift = beta.astype("float64") - mean.astype("float64") * scale
                shape = [-1 if a == axis else 1 for a in range(rank)]
                dtype = str(x.ty.dtype)
                scale, shift = (relax.const(v.reshape(shape).astype(dtype)) for v in (scale, shift))
                normalized = relax.op.add(relax.op.multiply(x, scale), shift)
                return relax.Tuple([normalized, params[2], params[3]])

        mod[gv] = ScaleShift(mod).visit_expr(func)
    # item 0 of the tuple each rewrite leaves is its sum itself, which fusion then sees
    return relax.transform.CanonicalizeBindings()(mod)


def _used_taps(size: int, out: int, kernel: int, stride: int, dilation: int, before: int):
    """The first and last kernel taps along one axis that read the input somewhere (the others
    read only padding), or None when every tap does."""
    used = [k for k in range(kernel)
            if any(0 <= y * stride + k * dilation - before < size for y in range(out))]
    if not used or (used[0] == 0 and used[-1] == kernel - 1):
        return None
    return used[0], used[-1]


def dead_taps_cropped(mod):
    """``mod`` with each 2-D convolution of a constant weight whose kernel reaches taps that
    read only padding computed without them: its weight sliced to the taps that read the
    input, its padding reduced to match (the output is the same). On small images the deep
    layers are this small: Inception v3 at 75x75 runs 3x3 convolutions on 1x1 inputs, and
    ResNet-50 at 32x32 its last 3x3 ones, where only the centre tap reads anything; those
    kernels stream their whole weight for a ninth of it (Inception v3's 3x3 convolution from
    448 to 384 channels: 164 us for 6 MiB of weights)."""
    return rewrite_calls(mod, {"relax.nn.conv2d": _cropped})


def _cropped(call, bindings):
    """:func:`dead_taps_cropped`'s convolution for ``call``, or None when it keeps its taps."""
    import tvm
    from tvm import relax

    x, weight = call.args
    attrs = call.attrs
    constant = bound_value(weight, bindings)
    shapes = [getattr(e.ty, "shape", None) for e in (x, weight, call)]
    if not isinstance(constant, tvm.ir.expr.Constant) or any(
            s is None or not all(isinstance(d, tvm.tirx.IntImm) for d in s.values)
            for s in shapes):
        return None
    data, kernel, out = ([int(d) for d in s.values] for s in shapes)
    padding = [int(p) for p in attrs.padding]  # top, left, bottom, right
    crops = []
    for i, axis in enumerate("HW"):
        d, k = attrs.data_layout.index(axis), attrs.kernel_layout.index(axis)
        o = attrs.out_layout.index(axis)
        taps = _used_taps(data[d], out[o], kernel[k], int(attrs.strides[i]),
                          int(attrs.dilation[i]), padding[i])
        if taps is None:
            crops.append(None)
            continue
        first, last = taps
        dilation = int(attrs.dilation[i])
        before = padding[i] - first * dilation
        after = (out[o] - 1) * int(attrs.strides[i]) + (last - first) * dilation + 1 \
            - data[d] - before
        if before < 0 or after < 0:
            return None
        crops.append((k, first, last, before, after))
    if all(c is None for c in crops):
        return None
    values = constant.value.numpy()
    for i, crop in enumerate(crops):
        if crop is not None:
            k, first, last, padding[i], padding[i + 2] = crop
            values = values.take(range(first, last + 1), axis=k)
    return relax.op.nn.conv2d(x, relax.const(values), strides=attrs.strides, padding=padding,
                              dilation=attrs.dilation, groups=attrs.groups,
                              data_layout=attrs.data_layout, kernel_layout=attrs.kernel_layout,
                              out_layout=attrs.out_layout, out_dtype=attrs.out_dtype)


def rewrite_for_cpu(mod):
    """``mod`` with every rewrite of this module applied, in the order they need."""
    mod = clip_as_bounds(batch_norm_as_scale_shift(dead_taps_cropped(mod)))
    return pad_output_channels(channels_last(mod))
