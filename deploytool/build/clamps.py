"""A TIR pass merging the clamps of float32 expressions: an int8 epilogue that requantizes,
dequantizes, clamps for a ReLU6 and requantizes again holds 3 clamps (6 max/min), which merge into
one. Every rewrite is exact, in float32 arithmetic: rounding to nearest is monotonic, so a clamp
commutes with a multiplication by a positive constant, an addition of a constant and a rounding
to an integer."""

from __future__ import annotations

import math

FLOAT32 = "float32"
ROUND = "tirx.nearbyint"  # TVM's round half to even, as ONNX's QuantizeLinear


def merged_clamps():
    """The pass: each max or min of a float32 value against a constant becomes one clamp of
    everything below it, merged with the clamps inside its chain of monotonic steps
    (multiplications by positive constants, additions of constants, roundings; see
    :func:`_lifted`)."""
    import tvm
    import tvm_ffi
    from tvm.tirx import expr

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="MergedClamps")
    def transform(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(expr.Max, _simplified), (expr.Min, _simplified)])

    return transform


def _simplified(node):
    if str(node.ty) != FLOAT32 or _constant_operand(node)[0] is None:
        return node
    inner, low, high = _lifted(node)
    return _clamp(inner, low, high)


def _lifted(node) -> tuple[object, float, float]:
    """(x, low, high) such that ``node`` is exactly ``clamp(x, low, high)`` (infinite ends: no
    bound), the clamps inside its chain of monotonic steps moved out and merged: for a
    non-decreasing f, ``f(clamp(x, a, b)) = clamp(f(x), f(a), f(b))``, and ``clamp(clamp(x, a,
    b), lo, hi) = clamp(x, clamp(a, lo, hi), clamp(b, lo, hi))``."""
    from tvm.tirx import expr

    if isinstance(node, (expr.Max, expr.Min)) and str(node.ty) == FLOAT32:
        constant, operand = _constant_operand(node)
        if constant is not None:
            inner, low, high = _lifted(operand)
            if isinstance(node, expr.Max):
                return inner, max(low, constant), max(high, constant)
            return inner, min(low, constant), min(high, constant)
    step = _monotonic(node)
    if step is None:
        return node, -math.inf, math.inf
    operand, rebuild, apply = step
    inner, low, high = _lifted(operand)
    if inner is operand:  # no clamp below
        return node, -math.inf, math.inf
    return rebuild(inner), apply(low), apply(high)


def _constant_operand(node) -> tuple[float | None, object]:
    from tvm.tirx import expr

    if isinstance(node.b, expr.FloatImm):
        return float(node.b.value), node.a
    if isinstance(node.a, expr.FloatImm):
        return float(node.a.value), node.b
    return None, node


def _monotonic(node):
    """(operand, rebuild, apply) of a non-decreasing step ``node`` of one float32 operand: a
    multiplication by a positive constant, an addition of a constant, a rounding; else None.
    ``apply`` computes the step on a float32 number as the machine does."""
    import numpy as np
    import tvm
    from tvm.ir.expr import Call
    from tvm.tirx import expr

    f32 = np.float32
    if isinstance(node, (expr.Mul, expr.Add)):
        constant, operand = _constant_operand(node)
        if constant is None or (isinstance(node, expr.Mul) and not constant > 0):
            return None
        if isinstance(node, expr.Mul):
            return operand, lambda x: x * expr.FloatImm(FLOAT32, constant), \
                lambda v: float(f32(v) * f32(constant))
        return operand, lambda x: x + expr.FloatImm(FLOAT32, constant), \
            lambda v: float(f32(v) + f32(constant))
    if isinstance(node, Call) and getattr(node.op, "name", None) == ROUND:
        return node.args[0], tvm.tirx.nearbyint, lambda v: float(np.rint(f32(v)))
    return None


def _clamp(node, low: float, high: float):
    from tvm.tirx import expr

    if low > -math.inf:
        node = expr.Max(node, expr.FloatImm(FLOAT32, low))
    if high < math.inf:
        node = expr.Min(node, expr.FloatImm(FLOAT32, high))
    return node
