"""Clamps merged through monotonic steps: an int8 epilogue's three clamps become one, and every
value, infinities and the bounds included, comes out as before."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_kernel

from deploytool.build.clamps import merged_clamps

# MobileNetV2's int8 epilogue: requantize (zero point 124), dequantize, ReLU6, requantize (0)
SCALE_IN, SCALE_BACK, SCALE_OUT = 19.591110229492188, 0.051043558865785599, 42.5


def _clamp(x, low, high):
    from tvm import tirx

    return tirx.min(tirx.max(x, tirx.const(low, "float32")), tirx.const(high, "float32"))


def _kernel(value):
    """A PrimFunc writing ``value(x)`` for every element of a float32 input of 4096."""
    import tvm
    from tvm import te

    x = te.placeholder((4096,), name="x")
    out = te.compute(x.shape, lambda i: value(x[i]))
    return tvm.IRModule({"main": te.create_prim_func([x, out])})


def _requantized(x):
    from tvm import tirx

    first = _clamp(tirx.nearbyint(x * SCALE_IN), -124.0, 131.0)
    relu6 = _clamp(first * SCALE_BACK, 0.0, 6.0)
    return tirx.Cast("uint8", _clamp(tirx.nearbyint(relu6 * SCALE_OUT), 0.0, 255.0))


def _clamps(mod) -> int:
    script = mod["main"].script()
    return script.count("T.max(") + script.count("T.min(")


def _inputs():
    edges = [np.inf, -np.inf, 0.0, -0.0, 6.0, 6.1,
             131 / SCALE_IN, -124 / SCALE_IN, 117.5 / SCALE_IN]
    values = np.concatenate([np.linspace(-12, 12, 4000), edges])
    return np.resize(values, 4096).astype("float32")


@pytest.mark.slow
def test_an_int8_epilogues_three_clamps_become_one_with_the_same_values():
    mod = _kernel(_requantized)
    before = _clamps(mod)
    merged = merged_clamps()(mod)
    assert (before, _clamps(merged)) == (6, 2), merged["main"].script()
    values = _inputs()
    np.testing.assert_array_equal(run_kernel(merged, [values], values.shape, "uint8"),
                                  run_kernel(mod, [values], values.shape, "uint8"))


@pytest.mark.slow
def test_clamps_under_steps_that_are_not_monotonic_stay():
    from tvm import tirx

    # a negative scale reverses the order; a square is not monotonic; -x as well
    for value in (lambda x: _clamp(_clamp(x, 0.0, 6.0) * -2.0, -4.0, 0.0),
                  lambda x: _clamp(_clamp(x, 0.0, 6.0) * _clamp(x, 0.0, 6.0), 1.0, 4.0),
                  lambda x: _clamp(tirx.const(0.0, "float32") - _clamp(x, 0.0, 6.0), -4.0, 0.0)):
        mod = _kernel(value)
        before = _clamps(mod)
        merged = merged_clamps()(mod)
        assert _clamps(merged) == before, merged["main"].script()
        values = _inputs()
        np.testing.assert_array_equal(run_kernel(merged, [values], values.shape),
                                      run_kernel(mod, [values], values.shape))


def test_a_clamp_moves_out_through_scales_shifts_and_roundings():
    from tvm import tirx

    # round(clamp(x, 0, 6) * 2.5 + 1) clamped to [2, 20]: one clamp to [2, 16] outside
    mod = _kernel(lambda x: _clamp(tirx.nearbyint(_clamp(x, 0.0, 6.0) * 2.5 + 1.0), 2.0, 20.0))
    script = merged_clamps()(mod)["main"].script()
    assert _clamps(merged_clamps()(mod)) == 2, script
    assert "T.float32(2.0)), T.float32(16.0))" in script, script
