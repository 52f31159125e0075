"""--precision: refusals, calibration data, the int8 rewrite into integer kernels, accuracy
validation, and int8 packages end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    compile_traced,
    compile_unread_model,
    grouped_net,
    groups_of_8_net,
    relax_calls,
    residual_net,
)

from deploytool.build.int8_rewrites import integer_products
from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.precision import check_precision
from deploytool.precision.calibration import calibration_samples
from deploytool.precision.quantize import quantize_int8
from deploytool.targets import load_target, machine_cpu_flags
from deploytool.tensors import TensorSpec
from deploytool.verify.accuracy import FP32, LITERAL_PEER, PEER, validate_accuracy

IMAGE = TensorSpec("x", [1, 3, 12, 12], "float32")


@pytest.fixture(scope="module")
def qdq(tmp_path_factory) -> tuple[Path, Path]:
    """The float32 ONNX model of _residual_net and its int8 QDQ model."""
    import onnx
    import torch

    folder = tmp_path_factory.mktemp("qdq")
    fp32 = folder / "model.onnx"
    torch.onnx.export(residual_net(), (torch.zeros(IMAGE.shape),), str(fp32),
                      input_names=["x"], dynamo=False)
    calibration = calibration_samples([IMAGE], None)
    quantized = folder / "model.int8.onnx"
    onnx.save(quantize_int8(onnx.load(fp32), calibration), quantized)
    return fp32, quantized


def _import(path: Path):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(path), keep_params_in_input=False)


def test_int8_is_refused_off_the_cpu():
    with pytest.raises(DeploytoolError, match="CPU targets"):
        check_precision("int8", load_target("cuda"))
    check_precision("int8", load_target("raspberry-pi-4"))  # NEON: no refusal


def test_calibration_reads_a_folder_per_sample_or_a_file_per_sample(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / "per_sample" / f"s{i}").mkdir(parents=True)
        np.save(tmp_path / "per_sample" / f"s{i}" / "x.npy",
                rng.standard_normal(IMAGE.shape).astype("float32"))
        (tmp_path / "files").mkdir(exist_ok=True)
        np.save(tmp_path / "files" / f"{i}.npy", np.full(IMAGE.shape, i, "float32"))
    folders = calibration_samples([IMAGE], tmp_path / "per_sample")
    files = calibration_samples([IMAGE], tmp_path / "files")
    assert len(folders.samples) == 3 and not folders.seeded and folders.warning() is None
    assert [float(s["x"].max()) for s in files.samples] == [0.0, 1.0, 2.0]
    seeded = calibration_samples([IMAGE], None)
    assert seeded.seeded and "--calibrate" in seeded.warning()
    np.save(tmp_path / "files" / "bad.npy", np.zeros((2, 2), "float32"))
    with pytest.raises(DeploytoolError, match="needs float32"):
        calibration_samples([IMAGE], tmp_path / "files")
    with pytest.raises(DeploytoolError, match="not a folder"):
        calibration_samples([IMAGE], tmp_path / "missing")


def test_weights_of_constant_nodes_are_quantized_too(qdq, tmp_path):
    """A frozen TorchScript model exports its weights as Constant nodes, which ONNX Runtime's
    quantizer does not quantize by itself (GoogLeNet's int8 package had no integer product)."""
    import onnx

    fp32, _ = qdq
    frozen = onnx.load(fp32)
    nodes = [onnx.helper.make_node("Constant", [], [w.name], value=w)
             for w in frozen.graph.initializer]
    nodes += list(frozen.graph.node)
    del frozen.graph.initializer[:]
    del frozen.graph.node[:]
    frozen.graph.node.extend(nodes)
    quantized = tmp_path / "frozen.int8.onnx"
    onnx.save(quantize_int8(frozen, calibration_samples([IMAGE], None)), quantized)
    assert integer_products(_import(quantized))[1] == 3


def test_every_quantized_product_becomes_an_integer_one(qdq):
    """The products take the 8-bit tensors and accumulate in int32: a rewrite that fell back to
    float32 would leave float convolutions, and dequantized inputs, behind."""
    from tvm import relax

    _, quantized = qdq
    mod, count = integer_products(_import(quantized))
    convs = [c for c in relax_calls(mod) if c.op.name == "relax.nn.conv2d"]
    depthwise = [c for c in convs if int(c.attrs.groups) > 1]
    convs = [c for c in convs if int(c.attrs.groups) == 1]
    matmuls = [c for c in relax_calls(mod) if c.op.name == "relax.matmul"]
    assert count == 3 and len(convs) == 2 and len(matmuls) == 1
    # the depthwise one reads the 8-bit input and sums in float32 (no channel sum to pair)
    assert len(depthwise) == 1 and str(depthwise[0].ty.dtype) == "float32"
    assert [str(a.ty.dtype) for a in depthwise[0].args] == ["uint8", "float32"]
    for product in convs + matmuls:
        data, weight = product.args
        assert str(product.ty.dtype) == "int32"
        assert str(data.ty.dtype) == "uint8" and str(weight.ty.dtype) == "int8"
    ops = {c.op.name for c in relax_calls(mod)}
    assert "relax.quantize" not in ops  # per tensor: elementwise, which layouts see through
    padded = [c for c in relax_calls(mod) if c.op.name == "relax.nn.pad"]
    assert padded and all(float(p.attrs.pad_value) != 0 for p in padded)  # the zero point
    # a dequantize of a quantize stays in float (no cast to 8 bits and straight back) unless
    # an integer product reads the 8-bit tensor too
    bindings = relax.analysis.get_var2val(mod["main"])
    widened = [c.args[0] for c in relax_calls(mod) if c.op.name == "relax.astype"
               and str(c.attrs.dtype) == "int32" and isinstance(c.args[0], relax.Var)
               and getattr(getattr(bindings.get(c.args[0]), "op", None), "name", "")
               == "relax.astype"]
    readers = [c for c in relax_calls(mod) if widened and widened[0] in c.args]
    assert len(widened) == 1 and len(readers) == 2  # the residual sum's, read by the head too


def test_an_integer_products_epilogue_scales_with_one_multiply_add(qdq):
    """Scale, zero point correction, bias and the next quantization's reciprocal scale fold
    into one multiplication and one addition between the int32 sums and the rounding."""
    from tvm import relax

    from deploytool.build.cpu_rewrites import bound_value

    _, quantized = qdq
    mod, _ = integer_products(_import(quantized))
    bindings = relax.analysis.get_var2val(mod["main"])

    def source(expr):
        return bound_value(expr, bindings)

    def op(expr):
        return getattr(getattr(source(expr), "op", None), "name", "")

    chains = []
    for call in relax_calls(mod):
        if call.op.name != "relax.round":
            continue
        steps, expr = [], call.args[0]
        while op(expr) in ("relax.add", "relax.multiply", "relax.astype"):
            steps.append(op(expr))
            expr = source(expr).args[0]
        if op(expr) in ("relax.nn.conv2d", "relax.matmul") \
                and str(source(expr).ty.dtype) == "int32":
            chains.append(steps)
    assert len(chains) >= 2
    assert all(steps in (["relax.add", "relax.multiply", "relax.astype"],
                         ["relax.multiply", "relax.astype"]) for steps in chains), chains


def _affine_chain(shared: bool):
    """``(x * a + b) * k`` of a 4-vector, with ``x * a + b`` an output too where ``shared``."""
    from tvm import relax

    x = relax.Var("x", relax.TensorType((4,), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            scaled = builder.emit(relax.op.multiply(x, relax.const(np.full(4, 3, "float32"))))
            shifted = builder.emit(relax.op.add(scaled, relax.const(np.arange(4, dtype="float32"))))
            out = builder.emit(relax.op.multiply(shifted, relax.const(np.float32(0.5))))
            outputs = builder.emit_output(relax.Tuple([out, shifted]) if shared else out)
        builder.emit_func_output(outputs)
    return builder.get()


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True])
def test_constant_multiplications_and_additions_fold_where_read_once(shared):
    import tvm
    from tvm import relax

    from deploytool.build.int8_rewrites import folded_constants

    mod = folded_constants(_affine_chain(shared))
    ops = [c.op.name for c in relax_calls(mod)]
    assert ops.count("relax.multiply") == (2 if shared else 1) and ops.count("relax.add") == 1
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    x = np.array([1, -2, 0.25, 7], "float32")
    out = vm["main"](tvm.runtime.tensor(x))
    got = (out[0] if shared else out).numpy()
    np.testing.assert_allclose(got, (x * 3 + np.arange(4)) * 0.5, rtol=1e-6)


def _against_onnxruntime(mod, quantized: Path):
    """Per seed: the integer module's output, ONNX Runtime's on the QDQ model, and one step of
    the output's quantization."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(IMAGE.shape).astype("float32")
        theirs = session.run(None, {"x": x})[0]
        yield vm["main"](tvm.runtime.tensor(x)).numpy(), theirs, float(np.abs(theirs).max()) / 127


@pytest.mark.slow
def test_the_integer_module_computes_what_onnxruntime_computes_from_the_qdq_model(qdq):
    _, quantized = qdq
    mod, _ = integer_products(_import(quantized))
    for ours, theirs, step in _against_onnxruntime(mod, quantized):
        assert np.abs(ours - theirs).max() <= step


@pytest.mark.slow
def test_a_depthwise_convolution_reads_8_bits_and_pads_with_the_zero_point(tmp_path):
    """A depthwise convolution of the (signed, so asymmetric) image: its padding must read the
    zero point, as the QDQ model's reads 0.0; ONNX Runtime on the QDQ model agrees within one
    step of the output's quantization."""
    import onnx
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1, groups=3),
                              torch.nn.Conv2d(3, 8, 1)).eval()
    fp32, quantized = tmp_path / "dw.onnx", tmp_path / "dw.int8.onnx"
    torch.onnx.export(net, (torch.zeros(IMAGE.shape),), str(fp32), input_names=["x"],
                      dynamo=False)
    onnx.save(quantize_int8(onnx.load(fp32), calibration_samples([IMAGE], None)), quantized)
    mod, _ = integer_products(_import(quantized))
    depthwise = [c for c in relax_calls(mod) if c.op.name == "relax.nn.conv2d"
                 and int(c.attrs.groups) > 1]
    assert [str(a.ty.dtype) for a in depthwise[0].args] == ["uint8", "float32"]
    for ours, theirs, step in _against_onnxruntime(mod, quantized):
        assert np.abs(ours - theirs).max() <= step
        # the borders are where a padding of 0 instead of the zero point would differ
        assert np.abs(ours - theirs)[..., 0, :].max() <= step


def _constant(value):
    return lambda arrays: [np.full((2, 10), value, "float32") + arrays[0]]


def test_accuracy_holds_the_package_to_the_fp32_model_and_to_the_peer():
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((2, 10)).astype("float32")] for _ in range(8)]
    exact = validate_accuracy(["y"], samples, _constant(0), _constant(0), _constant(0))
    assert exact.passed and {a.reference for a in exact.agreements} == {FP32, PEER}
    # a package off by a constant (a wrong zero point) fails against both references
    wrong = validate_accuracy(["y"], samples, _constant(3), _constant(0), _constant(0))
    assert not wrong.passed and all(not a.passed for a in wrong.agreements)
    assert wrong.agreements[0].top1 is not None  # 2-D scores: a classifier
    # where int8 itself loses accuracy, the peer's own agreement bounds the package's
    noisy = [[s[0] + rng.standard_normal((2, 10)).astype("float32")] for s in samples]
    lossy = iter(noisy * 2)
    peer = lambda arrays: [next(lossy)[0]]  # noqa: E731
    ours = iter(noisy)
    report = validate_accuracy(["y"], samples, lambda a: [next(ours)[0]], _constant(0), peer)
    assert report.passed and report.notes


def test_a_peer_near_the_fp32_threshold_leaves_the_package_twice_its_error():
    """A bf16 peer at cosine 0.9992 against fp32 (threshold 0.999): a package that errs 1.69x as
    much (cosine 0.9986) passes, as it would were the peer at 0.9989; one that errs 2.56x as
    much (0.9980) does not."""
    from deploytool.verify.accuracy import BF16_THRESHOLDS

    samples = [[np.zeros((2, 10), "float32")] for _ in range(8)]
    a = np.sqrt(1 / 0.9992 ** 2 - 1)  # cosine(e0, e0 + a e1) = 0.9992

    def off(scale):
        def run(arrays):
            out = np.zeros((2, 10), "float32")
            out[:, 0], out[:, 1] = 1, scale * a
            return [out + arrays[0]]
        return run

    near = validate_accuracy(["y"], samples, off(1.3), off(0), off(1), BF16_THRESHOLDS)
    assert near.passed, near.agreements
    far = validate_accuracy(["y"], samples, off(1.6), off(0), off(1), BF16_THRESHOLDS)
    assert not next(a for a in far.agreements if a.reference == FP32).passed


def test_the_package_is_held_to_the_closer_of_the_peers_executions():
    """ONNX Runtime's QLinear kernels and its literal QDQ graph round differently (by cosine 0.90
    on a random-weight RegNetX): a package that matches either is computing the QDQ model, one
    that matches neither is not."""
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((2, 10)).astype("float32")] for _ in range(8)]
    # the two executions are 0.05 either side of fp32's 0; the package within 0.001 of one
    shifted = {label: _constant(value) for label, value in ((PEER, 0.05), (LITERAL_PEER, -0.05))}
    near_literal = validate_accuracy(["y"], samples, _constant(-0.051), _constant(0), shifted)
    assert near_literal.passed
    assert {a.reference for a in near_literal.agreements} == {FP32, LITERAL_PEER}
    only_optimized = validate_accuracy(["y"], samples, _constant(-0.051), _constant(0),
                                       shifted[PEER])
    assert not only_optimized.passed  # the same package, held to one execution alone
    neither = validate_accuracy(["y"], samples, _constant(0.2), _constant(0), shifted)
    assert not neither.passed


@pytest.mark.slow
def test_an_int8_package_computes_in_integers_and_validates(qdq, tmp_path):
    """Compile from calibration data; the package's convolution kernels take uint8 and int8
    buffers and the generated code runs AMX's tdpbusd where the CPU has AMX-INT8, else
    vpdpbusd where it has AVX-512 VNNI."""
    import onnx
    import torch

    fp32, _ = qdq
    model = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(residual_net(), torch.zeros(IMAGE.shape)), str(model))
    data = tmp_path / "calibration"
    for i in range(4):
        (data / str(i)).mkdir(parents=True)
        np.save(data / str(i) / "x.npy",
                np.random.default_rng(i).standard_normal(IMAGE.shape).astype("float32"))
    out, dump = tmp_path / "pkg", tmp_path / "dump"
    outcome = CliRunner().invoke(main, ["compile", str(model), "-i", "x:1x3x12x12:float32",
                                        "--precision", "int8",
                                        "--calibrate", str(data), "-o", str(out),
                                        "--dump-ir", str(dump)])
    assert outcome.exit_code == 0, outcome.output
    assert "validation PASSED" in outcome.output and "seeded" not in outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    precision = manifest["precision"]
    assert precision["mode"] == "int8" and precision["integer_products"] == 3
    assert precision["calibration"]["samples"] == 4 and not precision["calibration"]["seeded"]
    assert manifest["validation"]["status"] == "passed"
    assert {i.op_type for i in onnx.load(out / "model.onnx").graph.node} >= {"QuantizeLinear"}
    assert (out / "reference.onnx").is_file()
    kernels = [p.read_text() for p in (dump / "tir").glob("*conv2d*prepacked.py")]
    integer = [k for k in kernels if '"int8"' in k]  # the depthwise one stays float32
    assert len(integer) == 2 and all('"uint8"' in k and '"int32"' in k for k in integer)
    features = manifest["runtime"]["cpu_features"]
    if "avx512_vnni" in features:
        # the stem (3 channels, padded to 4), the pointwise convolution and the head (10
        # columns, padded to 16); the depthwise one has no reduction over channels
        assert manifest["tuning"]["integer"] == 3
        amx = "amx_int8" in features
        assert manifest["tuning"]["amx"] == (3 if amx else 0)
        assert ("tdpbusd" if amx else "vpdpbusd") in (dump / "model.s").read_text()
        # both read their input in place, not through a copy of it (the stem's padding with
        # the zero point is done before)
        assert not any('T.sblock("pad_temp")' in k for k in integer), integer
    selftest = subprocess.run([str(out / "bin" / "deploytool-run"), str(out), "--self-test"],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    again = CliRunner().invoke(main, ["validate", str(out)])
    assert again.exit_code == 0 and "onnxruntime-int8" in again.output, again.output


@pytest.mark.slow
@pytest.mark.cross
def test_an_arm_int8_package_validates_under_qemu(tmp_path):
    """No dot-product kernels on ARM yet: the manifest says what computes the products, and the
    package, run by its aarch64 runner under qemu, still agrees with both references."""
    from deploytool.testing.examples import write_example

    model = write_example("cnn", tmp_path / "cnn.pt")
    out = tmp_path / "pkg"
    outcome = CliRunner().invoke(main, ["compile", str(model), "--precision", "int8", "--target",
                                        "raspberry-pi-4", "-o", str(out), "--no-java"])
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed"
    assert manifest["runtime"]["arch"] == "aarch64"
    assert "no dot-product kernels" in manifest["precision"]["instructions"]
    assert manifest["self_test"]["reference"] == "package"


@pytest.mark.slow
@pytest.mark.cross
def test_an_arm_dot_product_int8_package_runs_sdot_and_validates_under_qemu(tmp_path):
    """On a Cortex-A76 (Raspberry Pi 5) the activations are quantized signed (S8S8, as ONNX
    Runtime advises for ARM) and the products run on sdot; the package, run by its aarch64
    runner under qemu, agrees with both references."""
    from deploytool.testing.examples import write_example

    model = write_example("cnn", tmp_path / "cnn.pt")
    out, dump = tmp_path / "pkg", tmp_path / "dump"
    outcome = CliRunner().invoke(main, ["compile", str(model), "--precision", "int8", "--target",
                                        "raspberry-pi-5", "-o", str(out), "--no-java",
                                        "--dump-ir", str(dump)])
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed"
    assert manifest["precision"]["scheme"]["activations"].startswith("int8")
    assert manifest["precision"]["instructions"].startswith("sdot")
    assert manifest["tuning"]["integer"] == manifest["precision"]["integer_products"] == 3
    assert "sdot\tv" in (dump / "model.s").read_text()


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("net", [grouped_net, groups_of_8_net])
def test_an_arm_grouped_convolution_runs_sdot_and_validates_under_qemu(tmp_path, net):
    """Grouped convolutions whose groups fill whole vectors (8, 16 and 32 channels: two, four
    and eight of sdot's) take the sdot tile too; the package, run under qemu, agrees with ONNX
    Runtime on the QDQ model."""
    import torch

    module, shape = net()
    manifest, dump = compile_traced(tmp_path, module, shape, "--precision", "int8", "--target",
                                    "raspberry-pi-5")
    assert manifest["validation"]["status"] == "passed"
    products = len([m for m in module.modules() if isinstance(m, torch.nn.Conv2d)])
    assert manifest["tuning"]["integer"] == manifest["precision"]["integer_products"] == products
    assert "sdot\tv" in (dump / "model.s").read_text()


@pytest.mark.slow
def test_groups_of_8_channels_compile_to_vpdpbusd_on_256_bit_registers(tmp_path):
    """The grouped convolution's package kernels run vpdpbusd on ymm registers; where this CPU
    has AVX-512 VNNI, the package agrees with ONNX Runtime on the QDQ model."""
    import re

    manifest, dump = compile_traced(tmp_path, *groups_of_8_net(), "--precision", "int8",
                                    "--target", "x86_64-avx512-bf16")
    assert manifest["tuning"]["integer"] == manifest["precision"]["integer_products"] == 3
    assert re.search(r"vpdpbusd\t.*%ymm", (dump / "model.s").read_text())
    if "avx512_vnni" in machine_cpu_flags():
        assert manifest["validation"]["status"] == "passed"


def test_weights_that_products_share_are_quantized_as_weights_for_each():
    """ONNX Runtime's tool quantizes a shared initializer as an activation (per tensor,
    unsigned); each product gets its own copy, so each weight is a constant int8 per channel,
    whether layers share it or the exporter wrote an equal one as an Identity of it."""
    import io

    import onnx
    import torch

    torch.manual_seed(0)
    first, second = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 1)
    second.load_state_dict(first.state_dict())  # equal weights: exported as an Identity
    linear = torch.nn.Linear(8, 8)
    net = torch.nn.Sequential(first, torch.nn.ReLU(), second, torch.nn.Flatten(1), linear,
                              torch.nn.ReLU(), linear).eval()  # the linear layer read twice
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 8, 1, 1),), buffer, input_names=["x"], dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    quantized = quantize_int8(exported, calibration_samples(
        [TensorSpec("x", (1, 8, 1, 1), "float32")], None))
    graph = quantized.graph
    producers = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    products = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert len(products) == 4
    for node in products:
        dequantize = producers[node.input[1]]
        assert dequantize.op_type == "DequantizeLinear", node.name
        assert initializers[dequantize.input[0]].data_type == onnx.TensorProto.INT8, node.name


def test_calibration_data_without_int8_is_refused(tmp_path):
    outcome = compile_unread_model(tmp_path, "--calibrate", str(tmp_path))
    assert outcome.exit_code == 2 and "Add --precision int8" in outcome.output


def test_the_peers_own_spread_bounds_how_far_the_package_may_differ():
    """Where ONNX Runtime's two executions differ from each other (a model whose rounding ties
    compound), the package may differ from the closer by as much, and no more."""
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((2, 10)).astype("float32")] for _ in range(8)]
    spread = {PEER: _constant(0.04), LITERAL_PEER: _constant(-0.04)}  # cosine 0.9968 apart
    within = validate_accuracy(["y"], samples, _constant(0.09), _constant(0), spread)
    assert within.passed and any("differ from each other" in n for n in within.notes)
    beyond = validate_accuracy(["y"], samples, _constant(0.14), _constant(0), spread)
    assert not beyond.passed



def _rows(*rows):
    """A backend that returns these (1, classes) score rows, one per call."""
    it = iter(rows)
    return lambda arrays: [np.array([next(it)], "float32")]


def test_top1_leaves_out_rows_whose_fp32_scores_the_peers_own_error_can_swap():
    """A random-weight classifier's two highest scores can be closer than int8's own error: a
    package that swaps those is not wrong; one that swaps a clear winner is."""
    samples = [[np.zeros((1, 4), "float32")] for _ in range(2)]
    tied, clear = [3.0, 2.99, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0]
    swapped = [2.99, 3.0, 0.0, -1.0]
    # the peer errs by 0.05 on each sample: the tied row (0.01 apart) is undecided
    peer = [[3.05, 2.94, 0.0, -1.0], [3.05, 0.95, 0.0, -1.0]]
    report = validate_accuracy(["y"], samples, _rows(swapped, clear), _rows(tied, clear),
                               _rows(*peer))
    assert report.passed and report.agreements[0].undecided == 1
    assert report.agreements[0].top1 == 1.0 and report.notes
    # a peer without error decides every row: the swap counts against the package
    exact = validate_accuracy(["y"], samples, _rows(swapped, clear), _rows(tied, clear),
                              _rows(tied, clear))
    assert exact.agreements[0].top1 == 0.5 and not exact.agreements[0].passed


@pytest.mark.slow
def test_an_int8_convolution_with_a_swish_before_a_grouped_one_builds(tmp_path):
    """The swish's exp, computed inline, sat in the int8 kernel's epilogue, and TVM's loop
    partition copied it: vectorization refused the copy ("Let cannot bind the same var to two
    different values"), as it did on EfficientNet-B0's int8 kernels."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1, groups=8)).eval()
    model = tmp_path / "swish.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), str(model))
    outcome = CliRunner().invoke(main, ["compile", str(model), "-i", "x:1x3x32x32:float32",
                                        "--precision", "int8", "-o", str(tmp_path / "pkg"),
                                        "--no-java"])
    assert outcome.exit_code == 0, outcome.output
    assert "validation PASSED" in outcome.output
