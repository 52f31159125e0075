"""The Relax rewrites before the CPU build's fusion (build/cpu_rewrites.py) compute what the
model computes."""

from __future__ import annotations

import numpy as np
import pytest

from deploytool.build.cpu_rewrites import batch_norm_as_scale_shift, dead_taps_cropped


def _function(shape, emit):
    """A Relax module ``main(x)`` of ``x`` of ``shape`` returning ``emit(builder, x)``."""
    from tvm import relax
    from tvm.script import relax as R

    builder = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor(shape, "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(emit(builder, x))
        builder.emit_func_output(out)
    return builder.get()


def _run(mod, data):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(data)).numpy()


@pytest.mark.slow
def test_batch_norm_becomes_a_multiply_and_an_add_of_folded_constants():
    from tvm import relax

    rng = np.random.default_rng(0)
    gamma, beta, mean = (rng.standard_normal(6).astype("float32") for _ in range(3))
    var = rng.random(6).astype("float32") + 0.5
    def norm(builder, x):
        return relax.TupleGetItem(builder.emit(relax.op.nn.batch_norm(
            x, *(relax.const(v) for v in (gamma, beta, mean, var)), axis=1, epsilon=1e-3,
            training=False)), 0)

    rewritten = batch_norm_as_scale_shift(_function((1, 6, 3, 3), norm))
    assert "batch_norm" not in rewritten.script() and "R.multiply" in rewritten.script()
    data = rng.standard_normal((1, 6, 3, 3)).astype("float32")
    got = _run(rewritten, data)
    c = (slice(None), None, None)
    expected = (data - mean[c]) / np.sqrt(var[c] + 1e-3) * gamma[c] + beta[c]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)




@pytest.mark.slow
@pytest.mark.parametrize(("data", "kernel", "strides", "padding", "dilation", "cropped"), [
    ((1, 8, 1, 1), (6, 8, 3, 3), 1, [1, 1, 1, 1], 1, (1, 1)),  # Inception v3's last 3x3 at 75x75
    ((1, 8, 3, 3), (6, 8, 1, 7), 1, [0, 3, 0, 3], 1, (1, 5)),  # its 1x7 ones on 3x3 images
    ((1, 8, 3, 3), (6, 8, 7, 1), 1, [3, 0, 3, 0], 1, (5, 1)),
    ((1, 8, 2, 2), (6, 8, 3, 3), 2, [1, 1, 1, 1], 1, (2, 2)),  # strided: the first row unused
    ((1, 8, 3, 3), (6, 8, 3, 3), 1, [2, 2, 2, 2], 2, None),  # dilated: every tap reads
    ((1, 8, 5, 5), (6, 8, 3, 3), 1, [1, 1, 1, 1], 1, None),
])
def test_taps_that_read_only_padding_are_cropped(data, kernel, strides, padding, dilation,
                                                 cropped):
    from tvm import relax

    rng = np.random.default_rng(0)
    weight = relax.const(rng.standard_normal(kernel).astype("float32"))
    original = _function(data, lambda _, x: relax.op.nn.conv2d(
        x, weight, strides=strides, padding=padding, dilation=dilation))
    rewritten = dead_taps_cropped(original)
    (conv,) = [b.value for b in rewritten["main"].body.blocks[0].bindings]
    taps = tuple(int(d) for d in conv.args[1].ty.shape.values[2:])
    assert taps == (cropped or kernel[2:])
    x = rng.standard_normal(data).astype("float32")
    np.testing.assert_allclose(_run(rewritten, x), _run(original, x), rtol=1e-5, atol=1e-5)
