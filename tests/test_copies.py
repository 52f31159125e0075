"""Concatenations (alone, or followed by a batch norm and a ReLU as in DenseNet) copy each input
in vectors of its own; transposes that move the innermost axis copy in tiles; elementwise
kernels go by rows; the numbers stay right."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_kernel

from deploytool.build.cpu_pipeline import prim_funcs
from deploytool.compiler import CompileOptions, compile_model
from deploytool.schedules.copies import schedule_concat, schedule_rows, schedule_transpose
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import save_torchscript
from deploytool.tuning.settings import TuneSettings


def dense_block():
    """SqueezeNet's fire module (parallel 1x1 and 3x3 expansions, concatenated), then
    DenseNet's concatenation of the block's input and output, batch norm and ReLU."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 24, 3, padding=1)
            self.squeeze = nn.Conv2d(24, 16, 1)
            self.expand1 = nn.Conv2d(16, 32, 1)
            self.expand3 = nn.Conv2d(16, 48, 3, padding=1)
            self.norm = nn.BatchNorm2d(24 + 80)
            self.out = nn.Conv2d(24 + 80, 16, 1)

        def forward(self, x):
            x = self.stem(x)
            s = torch.relu(self.squeeze(x))
            y = torch.cat([torch.relu(self.expand1(s)), torch.relu(self.expand3(s))], 1)
            return self.out(torch.relu(self.norm(torch.cat([x, y], 1))))

    torch.manual_seed(0)
    model = Model().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    return model, [TensorSpec("x", (1, 3, 12, 12))]


def _fused(path):
    from deploytool.build.cpu_pipeline import fuse
    from deploytool.frontends.load import load_model, to_onnx
    from deploytool.importer.relax import import_relax
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.targets import load_target

    return fuse(import_relax(to_onnx(load_model(path))), tuning_target(load_target("cpu")))


def _concatenate(shapes, axis, epilogue: bool = False):
    """TOPI's concatenation kernel of float inputs of ``shapes``, then with ``epilogue`` a
    per-channel multiply and ReLU; returns (PrimFunc, numpy reference of random inputs)."""
    from tvm import te, topi

    inputs = [te.placeholder(shape, name=f"x{i}") for i, shape in enumerate(shapes)]
    out = topi.concatenate(inputs, axis)
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    expected = np.concatenate(values, axis)
    if epilogue:
        scale = te.placeholder((int(out.shape[-1]),), name="scale")
        out = topi.nn.relu(topi.multiply(out, scale))
        inputs.append(scale)
        values.append(rng.random(expected.shape[-1]).astype("float32"))
        expected = np.maximum(expected * values[-1], 0)
    return te.create_prim_func([*inputs, out]), values, expected


@pytest.mark.slow
@pytest.mark.parametrize(("shapes", "axis", "pieces"), [
    ([(1, 15, 15, 64), (1, 15, 15, 64)], 3, 2),  # SqueezeNet's fire module, channels-last
    ([(1, 4, 4, 256), *[(1, 4, 4, 32)] * 5], 3, 13),  # DenseNet's growing concatenations
    ([(1, 7, 7, 32), (1, 7, 7, 48), (1, 7, 7, 16)], 3, 6),  # unequal: pieces of their gcd
    ([(1, 3, 8, 40), (1, 5, 8, 40)], 1, 8),  # along rows: each row copied as it is
])
def test_a_concatenation_is_copied_in_pieces_of_whole_vectors(shapes, axis, pieces):
    func, values, expected = _concatenate(shapes, axis)
    scheduled = schedule_concat(func, 96)
    assert scheduled is not None
    script = scheduled.script()
    assert script.count("_partition") == pieces, script  # one loop per piece, no select
    assert "T.vectorized(8)" in script, script  # AVX2's 8 floats (96 accumulator lanes)
    np.testing.assert_array_equal(run_kernel(scheduled, values, expected.shape), expected)


@pytest.mark.slow
def test_a_concatenation_followed_by_elementwise_operations_is_one_loop_per_piece():
    func, values, expected = _concatenate([(1, 4, 4, 64), (1, 4, 4, 32)], 3, epilogue=True)
    scheduled = schedule_concat(func, 256)
    script = scheduled.script()
    assert script.count("_partition") == 3 and "T.vectorized(16)" in script, script
    np.testing.assert_allclose(run_kernel(scheduled, values, expected.shape), expected,
                               rtol=1e-6)


def test_what_is_not_a_concatenation_is_left_to_the_other_schedules():
    from tvm import te, topi

    x = te.placeholder((1, 8, 8, 16), name="x")
    assert schedule_concat(te.create_prim_func([x, topi.nn.relu(x)])) is None
    # 3 + 5 channels: gcd 1, a piece per channel; more pieces than MAX_PIECES stay sampled
    func, _, _ = _concatenate([(1, 2, 2, 3), (1, 2, 2, 5)], 3)
    assert schedule_concat(func) is not None
    func, _, _ = _concatenate([(1, 2, 2, 33), (1, 2, 2, 64)], 3)
    assert schedule_concat(func) is None


def test_densenets_concatenation_norm_and_relu_is_one_kernel_without_square_roots(tmp_path):
    path = save_torchscript(*dense_block(), tmp_path / "dense.pt")
    kernels = [f for gv, f in prim_funcs(_fused(path)) if "concatenate" in gv.name_hint]
    assert kernels, [gv.name_hint for gv, _ in prim_funcs(_fused(path))]
    for kernel in kernels:
        assert "sqrt" not in kernel.script()  # the normalization folded into two constants
        assert schedule_concat(kernel) is not None


@pytest.mark.slow
def test_a_model_of_concatenations_compiles_them_by_this_schedule_and_validates(tmp_path):
    path = save_torchscript(*dense_block(), tmp_path / "dense.pt")
    package = compile_model(CompileOptions(model=path, output=tmp_path / "pkg", java=False,
                                           tuning=TuneSettings(db=tmp_path / "no-db")))
    manifest = json.loads((package.path / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed", manifest["validation"]
    assert manifest["tuning"]["concatenations"] == 1, manifest["tuning"]


def _heads(tokens: int, heads: int, dim: int, order: tuple[int, ...], scale: float | None = None):
    """An attention's reshape of (1, tokens, heads * dim) into heads, transposed into ``order``
    (0, 2, 3, 1: keys for Q.K^T) and optionally scaled, as TOPI computes it: (PrimFunc, input,
    numpy reference)."""
    from tvm import te, tirx, topi

    x = te.placeholder((1, tokens, heads * dim), name="x")
    out = topi.transpose(topi.reshape(x, (1, tokens, heads, dim)), order)
    if scale is not None:
        out = topi.multiply(out, tirx.const(scale, "float32"))
    value = np.random.default_rng(0).standard_normal((1, tokens, heads * dim)).astype("float32")
    expected = value.reshape(1, tokens, heads, dim).transpose(order) * (scale or 1)
    return te.create_prim_func([x, out]), value, expected


def _channels_last(channels: int, size: int):
    from tvm import te, topi

    x = te.placeholder((1, channels, size, size), name="x")
    value = np.random.default_rng(0).standard_normal((1, channels, size, size)).astype("float32")
    return te.create_prim_func([x, topi.transpose(x, (0, 2, 3, 1))]), value, \
        value.transpose(0, 2, 3, 1)


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "innermost"), [
    # keys of a ViT (197 tokens: no whole vectors), then of a BERT (128: rows of vectors)
    (lambda: _heads(197, 4, 64, (0, 2, 3, 1), 0.125), "T.unroll(16)"),
    (lambda: _heads(128, 4, 64, (0, 2, 3, 1), 0.125), "T.vectorized(16)"),
    (lambda: _channels_last(3, 32), "T.unroll(3)"),  # an RGB image made channels-last
    (lambda: _channels_last(32, 7), "T.vectorized(16)"),
])
def test_a_transpose_is_copied_in_tiles_or_rows_without_index_arithmetic_per_lane(kernel,
                                                                                   innermost):
    func, value, expected = kernel()
    scheduled = schedule_transpose(func)
    _assert_rows_apart(scheduled, innermost)
    np.testing.assert_array_equal(run_kernel(scheduled, [value], expected.shape), expected)


def _assert_rows_apart(scheduled, innermost: str) -> None:
    """``scheduled`` keeps the output's rows apart, its innermost loop ``innermost``, its outer
    ones parallel. MetaSchedule's schedule fused every axis into one vectorized loop, each lane
    recovering its indices by division."""
    assert scheduled is not None
    script = scheduled.script()
    assert innermost in script and "T.parallel" in script, script
    assert "fused_1 in T.vectorized" not in script, script


def test_what_is_not_a_transpose_is_left_to_the_other_schedules():
    from tvm import te, topi

    x = te.placeholder((1, 8, 8, 16), name="x")
    bias = te.placeholder((16,), name="bias")
    assert schedule_transpose(te.create_prim_func([x, topi.nn.relu(x)])) is None
    assert schedule_transpose(te.create_prim_func([x, bias, topi.add(x, bias)])) is None
    assert schedule_transpose(te.create_prim_func([x, topi.reshape(x, (1, 64, 16))])) is None
    assert schedule_transpose(te.create_prim_func([x, topi.sum(x, axis=3)])) is None
    # queries and values: rows of the source stay rows, left to MetaSchedule's whole-row vectors
    assert schedule_transpose(_heads(197, 4, 64, (0, 2, 1, 3))[0]) is None


@pytest.mark.slow
def test_an_int8_stem_is_made_channels_last_by_rows_of_pixels():
    """The quantize, channel and border padding and NCHW -> NHWC of an int8 model's input: the
    threads share rows (226), not pixels (51076), and each pixel's 4 channels are unrolled."""
    from tvm import te, tirx, topi

    x = te.placeholder((1, 3, 16, 16), name="x")
    quantized = te.compute(x.shape, lambda *i: tirx.Cast("uint8", tirx.min(tirx.max(
        tirx.nearbyint(x(*i) * 20.0) + 126.0, 0.0), 255.0)))
    padded = topi.nn.pad(quantized, [0, 0, 1, 1], [0, 1, 1, 1], pad_value=126)
    func = te.create_prim_func([x, topi.transpose(padded, (0, 2, 3, 1))])
    scheduled = schedule_transpose(func)
    script = scheduled.script()
    assert "T.parallel(18)" in script and "T.unroll(4)" in script, script
    value = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    expected = np.pad(np.clip(np.round(value * 20) + 126, 0, 255).astype("uint8"),
                      [(0, 0), (0, 1), (1, 1), (1, 1)], constant_values=126).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(run_kernel(scheduled, [value], expected.shape, "uint8"),
                                  expected)


def _residual_cast():
    """A bf16 package's cast of a residual sum that a product also reads (MobileNetV2's 24
    channels at 56x56: rows of 24, not a multiple of a 16-float vector)."""
    import ml_dtypes
    from tvm import te, topi

    x = te.placeholder((1, 56, 56, 24), name="x")
    value = np.random.default_rng(0).standard_normal((1, 56, 56, 24)).astype("float32")
    return (te.create_prim_func([x, topi.cast(x, "bfloat16")]), [value],
            value.astype(ml_dtypes.bfloat16))


def _padded_bytes():
    """An int8 depthwise convolution's input padded by one pixel with its zero point."""
    from tvm import te, topi

    x = te.placeholder((1, 14, 14, 96), name="x", dtype="uint8")
    value = np.random.default_rng(0).integers(0, 255, (1, 14, 14, 96)).astype("uint8")
    return (te.create_prim_func([x, topi.nn.pad(x, [0, 1, 1, 0], [0, 1, 1, 0], 16)]), [value],
            np.pad(value, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=16))


def _scaled_sum():
    """A sum with a per-channel scale broadcast along the rows."""
    from tvm import te, topi

    x, y = te.placeholder((1, 7, 7, 160), name="x"), te.placeholder((1, 7, 7, 160), name="y")
    scale = te.placeholder((160,), name="scale")
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(shape).astype("float32")
              for shape in ((1, 7, 7, 160), (1, 7, 7, 160), (160,))]
    out = topi.add(topi.multiply(x, scale), y)
    return (te.create_prim_func([x, y, scale, out]), values,
            values[0] * values[2] + values[1])


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "innermost"), [
    (_residual_cast, "T.vectorized(8)"), (_padded_bytes, "T.vectorized(32)"),
    (_scaled_sum, "T.vectorized(32)")])
def test_an_elementwise_kernel_goes_by_rows_without_index_arithmetic_per_lane(kernel,
                                                                              innermost):
    func, values, expected = kernel()
    scheduled = schedule_rows(func)
    _assert_rows_apart(scheduled, innermost)  # (the cast: 40 us fused, 3.6 us by rows)
    out = run_kernel(scheduled, values, expected.shape, expected.dtype)
    if expected.dtype == np.float32:  # (LLVM may fuse the product and sum into one FMA)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    else:  # bit-exact: a bf16 cast rounds to nearest even, as ml_dtypes does
        np.testing.assert_array_equal(out.view(np.uint8), expected.view(np.uint8))


def test_what_is_not_elementwise_is_left_to_the_other_schedules():
    from tvm import te, topi

    x = te.placeholder((1, 8, 8, 16), name="x")
    assert schedule_rows(te.create_prim_func([x, topi.transpose(x, (0, 3, 1, 2))])) is None
    assert schedule_rows(te.create_prim_func([x, topi.sum(x, axis=3)])) is None
    # one input read in order, the other transposed (ConvNeXt's layer scale and residual)
    y = te.placeholder((1, 16, 8, 8), name="y")
    assert schedule_rows(te.create_prim_func(
        [x, y, topi.add(x, topi.transpose(y, (0, 2, 3, 1)))])) is None
    # BERT's heads merged back: each row of 256 reads 4 runs of 64 from 4 places
    heads = te.placeholder((1, 4, 128, 64), name="heads")
    merged = topi.reshape(topi.transpose(heads, (0, 2, 1, 3)), (1, 128, 256))
    assert schedule_rows(te.create_prim_func([heads, merged])) is None
    # a lookup: the read's index comes from another input
    table, ids = te.placeholder((1000, 64), name="table"), te.placeholder((8, 16), "int64", "ids")
    lookup = te.create_prim_func([table, ids, topi.take(table, ids, axis=0)])
    assert schedule_rows(lookup) is None and schedule_transpose(lookup) is None
    # one row: MetaSchedule's single vector loop has no division to do
    row = te.placeholder((1, 1280), name="row")
    assert schedule_rows(te.create_prim_func([row, topi.cast(row, "bfloat16")])) is None


@pytest.mark.slow
def test_a_quantize_by_rows_is_vectorized_without_gathers():
    """A ViT's per-channel weight quantize (3x17x64, round and clamp): split into 16-float
    vectors, LLVM made its rounding gathers, 25x slower; in 32-float ones it does not."""
    import tvm
    from tvm import te, tirx

    x = te.placeholder((1, 3, 17, 64), name="x")
    out = te.compute(x.shape, lambda *i: tirx.min(tirx.max(
        tirx.nearbyint(x(*i) * 113.6), -125.0), 130.0) * 0.0088)
    scheduled = schedule_rows(te.create_prim_func([x, out]))
    assert "T.vectorized(32)" in scheduled.script(), scheduled.script()
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "znver4", "num-cores": 2})
    assembly = tvm.compile(tvm.IRModule({"main": scheduled}), target=target).mod \
        .inspect_source("asm")
    assert "vrndscaleps" in assembly and "vgather" not in assembly
