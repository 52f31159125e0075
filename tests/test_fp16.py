"""--precision fp16 (ARM CPUs): refusals, the rewrite of products into float16 with float32
sums, the emulated peer of validation, and an fp16 package end to end under qemu."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import compile_unread_model, relax_calls, residual_net
from test_bf16 import _import, _onnx

from deploytool.build.half_rewrites import FP16_PRODUCTS, count_half_products, half_products
from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.precision import check_precision
from deploytool.targets import load_target


def test_fp16_builds_for_arm_cpus_and_is_refused_elsewhere(tmp_path):
    for target in ("raspberry-pi-5", "raspberry-pi-4", "jetson-orin-cpu", "arm64"):
        check_precision("fp16", load_target(target))
    for target in ("x86_64-avx512-bf16", "x86_64-avx2"):
        with pytest.raises(DeploytoolError, match="builds for ARM CPUs"):
            check_precision("fp16", load_target(target))
    with pytest.raises(DeploytoolError, match="CPU targets"):
        check_precision("fp16", load_target("jetson-orin"))
    outcome = compile_unread_model(tmp_path, "--precision", "fp16", "--target", "x86_64-avx2")
    assert outcome.exit_code == 1 and not (tmp_path / "m").exists()
    assert outcome.output.splitlines()[-1].startswith(
        "Error: --precision fp16 builds for ARM CPUs, and x86_64-avx2 is x86_64")


def test_every_product_by_a_constant_weight_reads_float16_and_sums_in_float32(tmp_path):
    """The depthwise convolution too (bf16 keeps it float32); nothing is padded (no tile asks)."""
    model = _import(_onnx(residual_net(), (1, 3, 12, 12), tmp_path / "m.onnx"))
    mod, count = half_products(model, FP16_PRODUCTS)
    assert count == 4 and count_half_products(mod, FP16_PRODUCTS) == 4
    products = relax_calls(mod, "relax.nn.conv2d", "relax.matmul")
    assert len(products) == 4
    for call in products:
        assert [str(a.ty.dtype) for a in call.args] == ["float16", "float16"]
        assert str(call.ty.dtype) == "float32"  # the sums
    shapes = sorted(tuple(int(d) for d in c.args[1].ty.shape) for c in products)
    assert shapes == [(16, 1, 3, 3), (16, 3, 3, 3), (16, 10), (16, 16, 1, 1)]


def test_the_emulated_fp16_peer_rounds_every_products_operands(tmp_path):
    """ONNX Runtime on the emulated model computes the depthwise convolution and the linear layer
    on float16-rounded operands, in float32: exactly what torch computes on rounded operands."""
    import onnx
    import torch

    from deploytool.precision.emulation import emulated_half
    from deploytool.verify.references import onnxruntime_session

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 4 * 4, 5)).eval()
    path = _onnx(net, (1, 8, 6, 6), tmp_path / "net.onnx")
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype("float32")
    model, products = emulated_half(onnx.load(path), FP16_PRODUCTS)
    assert products == 2
    got = onnxruntime_session(model.SerializeToString()).run(None, {"x": x})[0]

    def rounded(t):
        return t.half().float()

    with torch.no_grad():
        conv, linear = net[0], net[2]
        y = torch.nn.functional.conv2d(rounded(torch.from_numpy(x)), rounded(conv.weight),
                                       conv.bias, groups=8).flatten(1)
        want = torch.nn.functional.linear(rounded(y), rounded(linear.weight), linear.bias)
        exact = net(torch.from_numpy(x))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(got - exact.numpy()).max() > 1e-4  # the rounding is not optimized away


@pytest.mark.slow
@pytest.mark.cross
def test_an_arm_fp16_package_reads_float16_and_validates_under_qemu(tmp_path):
    """On a Raspberry Pi 5 target, run by its aarch64 runner under qemu, the package agrees with
    the float32 model and with the emulated peer; its kernels widen float16 operands (fcvtl)."""
    import torch

    model = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(residual_net(), torch.zeros(1, 3, 12, 12)), str(model))
    out, dump = tmp_path / "pkg", tmp_path / "dump"
    outcome = CliRunner().invoke(main, ["compile", str(model), "-i", "x:1x3x12x12:float32",
                                        "--precision", "fp16", "--target", "raspberry-pi-5",
                                        "-o", str(out), "--no-java", "--dump-ir", str(dump)])
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed"
    assert manifest["precision"]["mode"] == "fp16" and manifest["precision"]["fp16_products"] == 4
    references = {a["reference"] for a in manifest["validation"]["agreements"]}
    assert references == {"fp32", "onnxruntime-fp16"}
    assert manifest["self_test"]["reference"] == "package"
    assert "fcvtl" in (dump / "model.s").read_text()
    final = (dump / "relax-final.py").read_text()
    assert final.count('"float16"') >= 4
    again = CliRunner().invoke(main, ["validate", str(out)])
    assert again.exit_code == 0 and "onnxruntime-fp16" in again.output, again.output
