"""--precision bf16: refusals, the rewrite of products into bfloat16, the vdpbf16ps tile, the
emulated peer of validation, and bf16 packages end to end."""

from __future__ import annotations

import json
import subprocess

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    attention_net,
    compile_traced,
    compile_unread_model,
    relax_calls,
    residual_net,
)

from deploytool.build.half_rewrites import (
    BF16_PRODUCTS,
    FP16_PRODUCTS,
    count_half_products,
    half_products,
)
from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.precision import check_precision
from deploytool.targets import load_target, machine_cpu_flags
from deploytool.verify.accuracy import FP32, validate_accuracy

BF16_TARGET = "x86_64-avx512-bf16"
HAS_BF16 = "avx512_bf16" in machine_cpu_flags()


def _tokens():
    """A transformer's feed-forward block over 197 tokens (ViT's count, a prime): a linear layer,
    GELU (erf, computed inline), a second linear layer."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 64)).eval()


def _onnx(module, shape, path):
    import torch

    torch.onnx.export(module, (torch.zeros(shape),), str(path), input_names=["x"], dynamo=False)
    return path


def _import(path):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(path), keep_params_in_input=False)


def test_bf16_is_refused_where_the_target_lacks_it(tmp_path):
    check_precision("bf16", load_target(BF16_TARGET))
    for target in ("x86_64-avx512", "raspberry-pi-5"):
        with pytest.raises(DeploytoolError, match="needs AVX-512 BF16"):
            check_precision("bf16", load_target(target))
    with pytest.raises(DeploytoolError, match="CPU targets"):
        check_precision("bf16", load_target("cuda"))
    outcome = compile_unread_model(tmp_path, "--precision", "bf16", "--target", "x86_64-avx512")
    assert outcome.exit_code == 1
    assert outcome.output.splitlines()[-1].startswith(
        "Error: --precision bf16 needs AVX-512 BF16, which x86_64-avx512 (skylake-avx512) does "
        "not have. Compile with --precision int8 or fp32")


def test_products_by_constant_weights_take_bfloat16_and_sum_in_float32(tmp_path):
    model = _import(_onnx(residual_net(), (1, 3, 12, 12), tmp_path / "m.onnx"))
    mod, count = half_products(model, BF16_PRODUCTS)
    assert count == 3 and count_half_products(mod, BF16_PRODUCTS) == 3
    products = relax_calls(mod, "relax.nn.conv2d", "relax.matmul")
    dtypes = {(p.op.name, int(getattr(p.attrs, "groups", 1))): (str(p.args[0].ty.dtype),
                                                                str(p.args[1].ty.dtype),
                                                                str(p.ty.dtype))
              for p in products}
    assert dtypes[("relax.nn.conv2d", 16)] == ("float32", "float32", "float32")  # depthwise
    assert dtypes[("relax.nn.conv2d", 1)] == ("bfloat16", "bfloat16", "float32")
    assert dtypes[("relax.matmul", 1)] == ("bfloat16", "bfloat16", "float32")
    shapes = sorted(tuple(int(d) for d in p.args[1].ty.shape) for p in products
                    if str(p.args[1].ty.dtype) == "bfloat16")
    # the stem's 3 input channels padded to 4, the head's 10 columns (K x N) to 16
    assert shapes == [(16, 4, 3, 3), (16, 16), (16, 16, 1, 1)]


def test_grouped_convolutions_of_whole_vectors_take_bfloat16_as_their_emulation_does(tmp_path):
    """A grouped convolution whose groups fill whole vectors of the tile (16 channels) sums in
    the vdpbf16ps tile; groups of 8 and a depthwise convolution stay float32. The emulated peer
    rounds the operands of the same products."""
    import onnx
    import torch

    from deploytool.precision.emulation import emulated_half

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1, groups=2),
                              torch.nn.Conv2d(32, 32, 3, padding=1, groups=4),
                              torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)).eval()
    path = _onnx(net, (1, 32, 8, 8), tmp_path / "m.onnx")
    mod, count = half_products(_import(path), BF16_PRODUCTS)
    dtypes = {int(p.attrs.groups): str(p.args[0].ty.dtype)
              for p in relax_calls(mod, "relax.nn.conv2d")}
    assert dtypes == {2: "bfloat16", 4: "float32", 32: "float32"}
    assert count == 1 and emulated_half(onnx.load(path), BF16_PRODUCTS)[1] == 1


def test_products_of_two_activations_take_bfloat16_padded_to_the_tile(tmp_path):
    """Attention's scores (21 x 16 by 16 x 21) and weighted sum (21 x 21 by 21 x 16) read both
    operands in bfloat16: the scores' columns padded to 32 and the sum's 21 terms to 22, with
    zeros, the outputs sliced back; the emulated peer rounds the same operands. fp16 leaves them
    float32, and so does a product of one column."""
    import onnx
    import torch

    from deploytool.precision.emulation import emulated_half

    module, shape = attention_net()
    path = _onnx(module, shape, tmp_path / "m.onnx")
    mod, count = half_products(_import(path), BF16_PRODUCTS)
    assert count == 4 and count_half_products(mod, BF16_PRODUCTS) == 4
    operands = sorted((tuple(int(d) for d in p.args[0].ty.shape),
                       tuple(int(d) for d in p.args[1].ty.shape))
                      for p in relax_calls(mod, "relax.matmul") if len(p.args[1].ty.shape) == 4)
    assert operands == [((1, 2, 21, 16), (1, 2, 16, 32)), ((1, 2, 21, 22), (1, 2, 22, 16))]
    assert [int(d) for d in mod["main"].ret_ty.shape] == [1, 21, 32]
    assert emulated_half(onnx.load(path), BF16_PRODUCTS)[1] == 4
    assert half_products(_import(path), FP16_PRODUCTS)[1] == 2
    assert emulated_half(onnx.load(path), FP16_PRODUCTS)[1] == 2

    class OneColumn(torch.nn.Module):  # 21 x 32 by 32 x 1: a column padded to 16 stays float32
        def forward(self, x):
            return x @ x.transpose(1, 2)[..., :1]

    path = _onnx(OneColumn(), (1, 21, 32), tmp_path / "column.onnx")
    assert half_products(_import(path), BF16_PRODUCTS)[1] == 0
    assert emulated_half(onnx.load(path), BF16_PRODUCTS)[1] == 0


@pytest.mark.slow
def test_products_of_two_activations_pack_their_second_operand_in_the_kernel(tmp_path):
    """Both attention products take the vdpbf16ps tile, their second operand interleaved into
    pairs by the kernel (one shuffle per 16 x 2 block); where this CPU has AVX-512 BF16 the
    package agrees with ONNX Runtime computing the same bfloat16 operands in float32."""
    module, shape = attention_net()
    manifest, dump = compile_traced(tmp_path, module, shape, "--precision", "bf16",
                                    "--target", BF16_TARGET)
    assert manifest["precision"]["bf16_products"] == manifest["tuning"]["bf16"] == 4
    packing = [k.name for k in (dump / "tir").glob("*.py")
               if "deploytool_pairs16" in k.read_text()]
    assert len(packing) == 2, packing
    assert "vpermt2w" in (dump / "model.s").read_text()
    if HAS_BF16:
        peer = next(a for a in manifest["validation"]["agreements"]
                    if a["reference"] == "onnxruntime-bf16")
        assert peer["cosine"] > 0.99999


def test_the_emulated_peer_rounds_the_products_operands_to_bfloat16(tmp_path):
    """ONNX Runtime on the emulated model computes x_bf16 @ W_bf16 in float32: exactly numpy's
    product of the rounded operands, and not the float32 product."""
    import onnx
    import torch

    from deploytool.precision.emulation import emulated_half
    from deploytool.verify.references import onnxruntime_session

    layer = torch.nn.Linear(64, 32, bias=False).eval()
    path = _onnx(layer, (4, 64), tmp_path / "linear.onnx")
    x = np.random.default_rng(0).standard_normal((4, 64)).astype("float32")
    weight = layer.weight.detach().numpy().T

    def rounded(a):
        return a.astype(ml_dtypes.bfloat16).astype("float32")

    model, products = emulated_half(onnx.load(path), BF16_PRODUCTS)
    assert products == 1
    emulated = onnxruntime_session(model.SerializeToString())
    got = emulated.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, rounded(x) @ rounded(weight), rtol=1e-5, atol=1e-5)
    assert np.abs(got - x @ weight).max() > 1e-3  # the rounding is not optimized away
    # a frozen TorchScript model exports its weights as Constant nodes (GoogLeNet's did): the
    # same rounding, not a peer that is the float32 model again
    frozen = onnx.load(path)
    weights = list(frozen.graph.initializer)
    del frozen.graph.initializer[:]
    nodes = [onnx.helper.make_node("Constant", [], [w.name], value=w) for w in weights]
    nodes += list(frozen.graph.node)
    del frozen.graph.node[:]
    frozen.graph.node.extend(nodes)
    model, products = emulated_half(frozen, BF16_PRODUCTS)
    assert products == 1
    again = onnxruntime_session(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(again, got)


def test_a_jittered_emulation_moves_only_roundings_within_ulps_of_a_tie(tmp_path):
    """The jittered peer moves each rounded activation (not the weights) by a few float32 ulps
    before rounding to bf16: an input halfway between two bf16 values rounds either way, one
    farther from a tie as in the plain emulation."""
    import onnx
    import torch

    from deploytool.precision.emulation import emulated_half
    from deploytool.verify.references import onnxruntime_session

    layer = torch.nn.Linear(64, 32, bias=False).eval()
    path = _onnx(layer, (4, 64), tmp_path / "linear.onnx")
    plain, _ = emulated_half(onnx.load(path), BF16_PRODUCTS)
    jittered, products = emulated_half(onnx.load(path), BF16_PRODUCTS, jitter=1)
    assert products == 1
    assert [n.op_type for n in jittered.graph.node].count("RandomUniformLike") == 1
    runs = [onnxruntime_session(m.SerializeToString()) for m in (plain, jittered)]
    ties = np.full((4, 64), 1 + 2.0 ** -8, "float32")  # halfway between 1 and 1 + 2^-7
    off = np.full((4, 64), 1 + 2.0 ** -9, "float32")  # a quarter of a bf16 step from 1
    tie_plain, tie_jittered = (run.run(None, {"x": ties})[0] for run in runs)
    off_plain, off_jittered = (run.run(None, {"x": off})[0] for run in runs)
    assert not np.array_equal(tie_plain, tie_jittered)
    np.testing.assert_array_equal(off_plain, off_jittered)


def test_the_emulated_peers_are_built_when_run_and_one_at_a_time(tmp_path, monkeypatch):
    """The three emulations (plain, jittered twice) each hold the model's weights: validation
    builds each when it first runs it, after the one before is released."""
    import types
    import weakref

    import torch

    from deploytool.verify import accuracy, validate

    layer = torch.nn.Linear(64, 32).eval()
    _onnx(layer, (4, 64), tmp_path / "model.onnx")
    built, alive, most = [], [], [0]
    real = validate.onnxruntime_backend

    class Token:  # released with the execution that holds it
        pass

    def counted(package, model=None, optimized=True):
        run = real(package, model, optimized)
        token = Token()
        alive.append(weakref.ref(token))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        built.append(model)
        return lambda arrays: (token, run(arrays))[1]

    monkeypatch.setattr(validate, "onnxruntime_backend", counted)
    peers = accuracy._emulated_half(types.SimpleNamespace(path=tmp_path), "bf16")
    assert len(peers) == 3 and not built  # nothing built before it runs
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((4, 64)).astype("float32")] for _ in range(3)]
    fp32 = real(types.SimpleNamespace(path=tmp_path))
    report = validate_accuracy(["y"], samples, fp32, fp32, peers)
    assert len(built) == 3 and most[0] == 1
    assert {a.reference for a in report.agreements} <= {FP32, *peers}


def test_accuracy_without_a_peer_holds_the_package_to_fp32_alone():
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((2, 10)).astype("float32")] for _ in range(4)]
    same = validate_accuracy(["y"], samples, lambda a: a, lambda a: a, None)
    assert same.passed and [a.reference for a in same.agreements] == [FP32]
    off = validate_accuracy(["y"], samples, lambda a: [a[0] + 1], lambda a: a, None)
    assert not off.passed


@pytest.mark.slow
def test_the_bf16_tile_runs_vdpbf16ps_on_rows_no_tile_divides(tmp_path):
    """Each product of the feed-forward block (197 rows, padded to whole tiles) is scheduled
    with the bf16 tile, and the code LLVM makes for a bf16 CPU multiplies with vdpbf16ps."""
    from deploytool.build.cpu_pipeline import SchedulePlan, build_pipeline
    from deploytool.build.library import build_library

    model = _import(_onnx(_tokens(), (1, 197, 64), tmp_path / "m.onnx"))
    mod, count = half_products(model, BF16_PRODUCTS)
    assert count == 2
    plan = SchedulePlan(None)
    target = load_target(BF16_TARGET)
    dump = tmp_path / "dump"
    build_library(mod, target, tmp_path / "model.so", build_pipeline(target, None, plan), dump)
    assert plan.bf16 == 2
    assert (dump / "model.s").read_text().count("vdpbf16ps") >= 2 * 24  # 24-accumulator tiles


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX-512 BF16")
def test_a_bf16_package_computes_in_bfloat16_and_validates(tmp_path):
    import torch

    model = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(residual_net(), torch.zeros(1, 3, 12, 12)), str(model))
    out, dump = tmp_path / "pkg", tmp_path / "dump"
    outcome = CliRunner().invoke(main, ["compile", str(model), "-i", "x:1x3x12x12:float32",
                                        "--precision", "bf16", "--target", BF16_TARGET,
                                        "-o", str(out), "--no-java", "--dump-ir", str(dump)])
    assert outcome.exit_code == 0, outcome.output
    assert "validation PASSED" in outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["mode"] == "bf16" and manifest["precision"]["bf16_products"] == 3
    assert manifest["tuning"]["bf16"] == 3  # stem, pointwise and head kernels
    references = {a["reference"] for a in manifest["validation"]["agreements"]}
    assert references == {"fp32", "onnxruntime-bf16"}
    assert all(a["cosine"] > 0.999 for a in manifest["validation"]["agreements"])
    assert "vdpbf16ps" in (dump / "model.s").read_text()
    selftest = subprocess.run([str(out / "bin" / "deploytool-run"), str(out), "--self-test"],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    again = CliRunner().invoke(main, ["validate", str(out)])
    assert again.exit_code == 0 and "onnxruntime-bf16" in again.output, again.output


def test_outputs_are_padded_to_tiles_with_enough_accumulators(tmp_path):
    """400 channels at 7x7 (RegNetX's last stage) would take tiles of 7 pixels x 1 vector: the
    rewrite pads them to 416 channels (tiles of 7 x 2) and slices the output back."""
    import torch

    from deploytool.schedules.dot_products import padded_extents

    assert padded_extents(7, 400) == (7, 416)
    assert padded_extents(56, 64) == (56, 64)  # tiles of 4 x 4 already
    assert padded_extents(1, 16) == (1, 16)  # a matrix-vector product is not padded 4x
    for width, channels in [(7, 400), (1, 1000), (56, 24), (197, 256), (13, 40)]:
        padded_width, padded_channels = padded_extents(width, channels)
        assert padded_channels % 16 == 0 and padded_channels <= 1.25 * (-(-channels // 16) * 16)
        assert width <= padded_width <= 1.25 * width
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(400, 400, 1).eval()
    model = _import(_onnx(conv, (1, 400, 7, 7), tmp_path / "c.onnx"))
    mod, count = half_products(model, BF16_PRODUCTS)
    convs = relax_calls(mod, "relax.nn.conv2d")
    assert count == 1 and [int(d) for d in convs[0].args[1].ty.shape] == [416, 400, 1, 1]
    assert [int(d) for d in mod["main"].ret_ty.shape] == [1, 400, 7, 7]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX-512 BF16")
def test_a_convolution_padded_wider_computes_its_own_columns(tmp_path):
    """A 3x3 convolution to 40 channels at 29x29 (a prime width) is computed 30 wide and 48
    channels deep, sliced back: the package agrees with ONNX Runtime's bf16 emulation."""
    import torch

    torch.manual_seed(0)
    model = tmp_path / "conv.pt"
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 40, 3, padding=1), torch.nn.ReLU()).eval()
    torch.jit.save(torch.jit.trace(conv, torch.zeros(1, 8, 29, 29)), str(model))
    out = tmp_path / "pkg"
    outcome = CliRunner().invoke(main, ["compile", str(model), "-i", "x:1x8x29x29:float32",
                                        "--precision", "bf16", "-o", str(out), "--no-java"])
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tuning"]["bf16"] == 1
    peer = next(a for a in manifest["validation"]["agreements"]
                if a["reference"] == "onnxruntime-bf16")
    assert peer["cosine"] > 0.99999
