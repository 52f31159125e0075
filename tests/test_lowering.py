"""The CPU lowering pipeline: small kernels on one thread, per-tile scratch buffers on the stack,
and the numbers stay right."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import relax_module

from deploytool.build import lowering
from deploytool.targets import load_target
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import save_torchscript
from deploytool.tuning.settings import TuneSettings

WORKSPACE_CALL = "load ptr, ptr @__TVMBackendAllocWorkspace"
PARALLEL_LAUNCH = "load ptr, ptr @__TVMBackendParallelLaunch"

pytestmark = pytest.mark.slow  # every test here builds kernels


@pytest.fixture(scope="module")
def grouped_path(tmp_path_factory):
    """A padded grouped convolution (4 groups of 8 channels). Inside its parallel loop, each
    tile pads its input rows into a scratch buffer of over 1 KiB: TVM alone takes it from its
    workspace pool. (Depthwise convolutions on AVX2 and NEON no longer pad into scratch, see
    schedules._tile_depthwise, so they no longer show this.)"""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=4), nn.ReLU()).eval()
    return save_torchscript(model, [TensorSpec("x", (1, 32, 16, 16))],
                            tmp_path_factory.mktemp("lowering") / "grouped.pt")


def _workspace_calls(path, tir_pipeline: str) -> int:
    """How many times the compiled kernels ask TVM's workspace pool for memory."""
    import tvm

    from deploytool.build.cpu_pipeline import build_pipeline
    from deploytool.schedules.metaschedule import tuning_target

    target = load_target("cpu")
    executable = tvm.compile(relax_module(path), target=tuning_target(target),
                             relax_pipeline=build_pipeline(target), tir_pipeline=tir_pipeline)
    return executable.mod.imports[0].inspect_source("ll").count(WORKSPACE_CALL)


def test_per_tile_scratch_is_on_the_stack(grouped_path):
    assert _workspace_calls(grouped_path, "default") >= 1  # what TVM alone does
    assert _workspace_calls(grouped_path, lowering.tir_pipeline()) == 0


def test_scratch_of_a_single_threaded_kernel_is_on_the_stack(grouped_path, monkeypatch):
    monkeypatch.setattr(lowering, "SINGLE_THREAD_FLOPS", 10 ** 9)  # no parallel loop left
    assert _workspace_calls(grouped_path, lowering.tir_pipeline()) == 0


def _kernel_ir(func, target: str = "cpu") -> str:
    """The LLVM IR of the scheduled kernel ``func``, lowered by the CPU pipeline for ``target``."""
    import tvm

    from deploytool.schedules.metaschedule import tuning_target

    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=tuning_target(load_target(target)),
                         pipeline=lowering.tir_pipeline())
    return lib.inspect_source("ll")


def _linear_layer_ir(inputs: int, outputs: int) -> str:
    """The LLVM IR of one matrix-vector product (a Linear layer at batch 1), register-tiled."""
    from tvm import te

    from deploytool.schedules.cpu import schedule_kernel

    x = te.placeholder((1, inputs), name="x")
    w = te.placeholder((inputs, outputs), name="w")
    k = te.reduce_axis((0, inputs), name="k")
    y = te.compute((1, outputs), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="matmul")
    func = schedule_kernel(te.create_prim_func([x, w, y]))
    assert func is not None
    return _kernel_ir(func)


def test_only_kernels_worth_two_threads_launch_them(monkeypatch):
    assert 64 * 512 * 2 < lowering.SINGLE_THREAD_FLOPS < 512 * 256 * 2
    assert PARALLEL_LAUNCH not in _linear_layer_ir(64, 512)
    assert PARALLEL_LAUNCH in _linear_layer_ir(512, 256)
    monkeypatch.setattr(lowering, "SINGLE_THREAD_FLOPS", 0)
    assert PARALLEL_LAUNCH in _linear_layer_ir(64, 512)


def _dot_product_layer_ir(target: str, dtypes: tuple[str, str, str], rows: int, columns: int,
                          depth: int) -> str:
    """The LLVM IR of a ``rows x depth`` by ``depth x columns`` matrix product by a constant
    weight in a dot-product instruction's tile (``dtypes``: input, weight, sums)."""
    import tvm
    from tvm import te

    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.schedules.products import schedule_dot_product, target_instructions

    data, weight, accumulator = dtypes
    rows, columns, depth = (tvm.tirx.const(n, "int64") for n in (rows, columns, depth))
    x = te.placeholder((rows, depth), data, name="x")
    w = te.placeholder((depth, columns), weight, name="w")
    k = te.reduce_axis((0, depth), name="k")
    y = te.compute((rows, columns), lambda i, j: te.sum(
        x[i, k].astype(accumulator) * w[k, j].astype(accumulator), axis=k), name="matmul")
    func = te.create_prim_func([x, w, y]).with_attr("layout_free_buffers", [1])
    instructions = target_instructions(tuning_target(load_target(target)))
    scheduled, instruction = schedule_dot_product(func, instructions)
    assert instruction is not None and instruction.data == data
    return _kernel_ir(scheduled, target)


BF16_TILE = ("bfloat16", "bfloat16", "float32")


@pytest.mark.parametrize("target", ["x86_64-avx512-bf16", "x86_64-amx"])
@pytest.mark.parametrize("dtypes", [BF16_TILE, ("uint8", "int8", "int32")])
def test_kernels_of_dot_product_instructions_count_their_products(target, dtypes):
    """An estimate of the tiled kernel sees no operations in the calls of vdpbf16ps's and AMX's
    tiles: such a kernel ran on one thread, as fast on two cores as on one. A BERT-medium's
    query projection (128 x 256 x 256, 320 KiB of arguments at most) takes both."""
    assert lowering.SINGLE_THREAD_FLOPS < 2 * 128 * 256 * 256
    assert PARALLEL_LAUNCH in _dot_product_layer_ir(target, dtypes, 128, 256, 256)


def test_dot_product_kernels_count_operations_in_float32_multiply_adds():
    """vdpbf16ps sums two products a lane where vfmadd231ps sums one: a bf16 product of
    SINGLE_THREAD_FLOPS operations is worth half as many float32 ones, and runs on one thread."""
    assert 2 * 8 * 64 * 128 == lowering.SINGLE_THREAD_FLOPS
    assert PARALLEL_LAUNCH not in _dot_product_layer_ir("x86_64-avx512-bf16", BF16_TILE, 8, 64,
                                                        128)


def _concatenation_ir(channels: int) -> str:
    """The LLVM IR of a channels-last concatenation of two 56x56 inputs of ``channels``."""
    from tvm import te, topi

    from deploytool.schedules.copies import schedule_concat

    inputs = [te.placeholder((1, 56, 56, channels), name=f"x{i}") for i in range(2)]
    func = schedule_concat(te.create_prim_func([*inputs, topi.concatenate(inputs, 3)]))
    return _kernel_ir(func)


def test_copies_without_arithmetic_take_the_threads_only_when_large():
    assert 2 * 56 * 56 * 16 * 2 * 4 < lowering.SINGLE_THREAD_BYTES < 2 * 56 * 56 * 64 * 2 * 4
    assert PARALLEL_LAUNCH not in _concatenation_ir(16)  # 784 KiB read and written
    assert PARALLEL_LAUNCH in _concatenation_ir(64)  # 3 MiB


def test_scratch_over_the_limit_stays_in_the_workspace_pool(grouped_path, monkeypatch):
    monkeypatch.setattr(lowering, "STACK_SCRATCH_BYTES", 1024)  # the padded rows no longer fit
    assert _workspace_calls(grouped_path, lowering.tir_pipeline()) >= 1


def test_a_package_with_stack_scratch_matches_both_references(compile_package, grouped_path,
                                                              tmp_path):
    package = compile_package(grouped_path, java=False, tuning=TuneSettings(db=tmp_path / "no-db"))
    validation = json.loads((package.path / "manifest.json").read_text())["validation"]
    assert validation["status"] == "passed", validation
    assert set(validation["references"]) >= {"onnxruntime", "torchscript"}


@pytest.mark.parametrize("function, reference", [
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("exp", lambda x: np.exp(x)),
    ("tanh", np.tanh),
    ("erf", np.vectorize(math.erf)),
])
def test_transcendental_functions_are_computed_inline(function, reference):
    """A vector exp, sigmoid, tanh or erf is no longer one libm call per element (7-50x slower
    than the polynomial), and the polynomial stays within a few ulp."""
    import tvm
    from tvm import te, tirx

    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.targets import load_target

    x = te.placeholder((256,), name="x")
    y = te.compute((256,), lambda i: getattr(tirx, function)(x[i]), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 16])[1])
    target = tuning_target(load_target("cpu"))
    calls = {}
    for pipeline in ("default", lowering.tir_pipeline()):
        lib = tvm.tirx.build(sch.mod, target=target, pipeline=pipeline)
        ir = lib.inspect_source("ll")
        calls[pipeline] = re.findall(r"call .*@(?:llvm\.)?(?:exp|tanh|erf)", ir)
        values = np.linspace(-12, 12, 256, dtype="float32")
        out = tvm.runtime.tensor(np.zeros(256, "float32"))
        lib["main"](tvm.runtime.tensor(values), out)
        expected = reference(values.astype("float64"))
        assert np.allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7), function
    assert calls["default"]  # what TVM alone does (sigmoid and tanh: through exp)
    assert not calls[lowering.tir_pipeline()], calls


def test_rounding_stays_one_vector_and_half_to_even():
    """An int8 epilogue's rounding (nearbyint) is one 16-float instruction on AVX-512, where TVM
    alone computes it element by element and LLVM vectorizes that at 8 floats on Intel's CPUs;
    ties still go to the even integer, as ONNX's QuantizeLinear."""
    import tvm
    from tvm import te, tirx

    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.targets import load_target

    x = te.placeholder((64,), name="x")
    y = te.compute((64,), lambda i: tirx.nearbyint(x[i] * 0.5), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 16])[1])
    avx512 = tuning_target(load_target("x86_64-avx512"))
    widths = {}
    for pipeline in ("default", lowering.tir_pipeline()):
        ir = tvm.tirx.build(sch.mod, target=avx512, pipeline=pipeline).inspect_source("ll")
        widths[pipeline] = set(re.findall(r"@llvm\.nearbyint\.v(\d+)f32", ir))
    assert widths["default"] == {"8"}  # what TVM alone does
    assert widths[lowering.tir_pipeline()] == {"16"}
    lib = tvm.tirx.build(sch.mod, target=tuning_target(load_target("cpu")),
                         pipeline=lowering.tir_pipeline())
    values = np.arange(-32, 32, dtype="float32")  # halves: every tie, odd and even
    out = tvm.runtime.tensor(np.zeros(64, "float32"))
    lib["main"](tvm.runtime.tensor(values), out)
    np.testing.assert_array_equal(out.numpy(), np.rint(values * np.float32(0.5)))
