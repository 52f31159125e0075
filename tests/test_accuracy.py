"""Validation that a miscompile cannot slip through: vacuous outputs, real-looking inputs, and
deliberately wrong builds that validation catches and --localize pins to their layer."""

import functools
import json
import re

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from deploytool.cli import main
from deploytool.compiler import CompileOptions, compile_model
from deploytool.frontends.load import load_model, to_onnx
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import save_torchscript
from deploytool.testing.inject import drop_bias, injected, scale_weight, transpose_kernel
from deploytool.testing.zoo import ZOO, build_zoo_model, save_exported
from deploytool.verify.inputs import integer_ranges, make_inputs
from deploytool.verify.validate import find_vacuous


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


# ---------------------------------------------------------------------------------------------
# Vacuity, from the reference outputs alone


def test_zero_constant_and_tiny_outputs_are_vacuous():
    rng = np.random.default_rng(0)
    moving = [[rng.standard_normal(8)] for _ in range(3)]
    assert find_vacuous(["y"], moving, 1e-4, {}) == []
    zeros = [[np.zeros(8)] for _ in range(3)]
    assert "zero for every input" in find_vacuous(["y"], zeros, 1e-4, {})[0].reason
    constant = np.linspace(-1, 1, 8)
    same = [[constant + 1e-7 * k] for k in range(3)]
    found = find_vacuous(["y"], same, 1e-4, {})
    assert "does not depend on the input" in found[0].reason and found[0].spread < 1e-6
    tiny = [[rng.standard_normal(8) * 1e-8] for _ in range(3)]
    assert find_vacuous(["y"], tiny, 1e-4, {}) == []  # tiny but input-dependent: fine
    assert "within --atol" in find_vacuous(["y"], tiny, 1e-4, {"y": 1e-5})[0].reason


class _Constant(nn.Module):
    """A model whose output ignores its input (zero-initialised head, as vit_b_16's)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)
        nn.init.zeros_(self.head.weight)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


@pytest.mark.slow
def test_an_input_independent_model_is_not_reported_as_passed(tmp_path):
    pt = save_torchscript(_Constant(), [TensorSpec("x", (1, 16))], tmp_path / "constant.pt")
    result = invoke("compile", pt, "-o", tmp_path / "pkg")
    assert result.exit_code == 1
    assert "validation VACUOUS" in result.output and "does not depend on the input" in result.output
    assert "--inputs DIR" in result.output and "PASSED" not in result.output.splitlines()[-1]
    assert not (tmp_path / "pkg").exists()
    result = invoke("compile", pt, "-o", tmp_path / "pkg", "--allow-vacuous")
    assert result.exit_code == 0, result.output
    assert "validation PASSED (vacuous, accepted)" in result.output
    validation = json.loads((tmp_path / "pkg" / "manifest.json").read_text())["validation"]
    assert validation["status"] == "passed" and validation["vacuous"][0]["output"] == "output"


# ---------------------------------------------------------------------------------------------
# Inputs that look like real data


class _Tagger(nn.Module):
    def __init__(self, vocab=37, types=3):
        super().__init__()
        self.words, self.types = nn.Embedding(vocab, 8), nn.Embedding(types, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, input_ids, token_type_ids, attention_mask):
        hidden = self.words(input_ids) + self.types(token_type_ids)
        return self.out(hidden * attention_mask.unsqueeze(-1).float())


def test_integer_inputs_stay_within_the_embedding_tables_and_masks_are_0_1(tmp_path):
    specs = [TensorSpec("input_ids", (2, 64), "int64"),
             TensorSpec("token_type_ids", (2, 64), "int64"),
             TensorSpec("attention_mask", (2, 64), "int64")]
    pt = save_torchscript(_Tagger(), specs, tmp_path / "tagger.pt")
    ranges = integer_ranges(to_onnx(load_model(pt)))
    assert ranges == {"input_ids": (0, 37), "token_type_ids": (0, 3)}
    ids, types, mask = make_inputs(specs, seed=0, model_ranges=ranges)
    assert ids.min() >= 0 and ids.max() < 37 and len(np.unique(ids)) > 20
    assert set(np.unique(types)) == {0, 1, 2}
    assert set(np.unique(mask)) <= {0, 1} and mask[:, 0].all()
    floats = make_inputs([TensorSpec("x", (10000,))], seed=0)[0]
    assert abs(floats.std() - 1) < 0.05 and floats.min() < -3  # standard normal


@pytest.mark.slow
def test_a_token_model_validates_with_its_model_ranges(tmp_path):
    specs = [TensorSpec("input_ids", (1, 16), "int64"),
             TensorSpec("token_type_ids", (1, 16), "int64"),
             TensorSpec("attention_mask", (1, 16), "int64")]
    pt = save_torchscript(_Tagger(vocab=500), specs, tmp_path / "tagger.pt")
    package = compile_model(CompileOptions(model=pt, output=tmp_path / "pkg", java=False))
    assert package.manifest["input_ranges"] == {"input_ids": [0, 500], "token_type_ids": [0, 3]}
    ids = np.load(tmp_path / "pkg" / "testdata" / "input0.npy")
    assert ids.max() >= 10  # not the old [0, 10) default
    assert package.manifest["validation"]["status"] == "passed"


# ---------------------------------------------------------------------------------------------
# Deliberately wrong builds: caught, and localised to the injected layer

FAULTS = {"scale-1.001": scale_weight(1.001), "drop-bias": drop_bias,
          "transpose": transpose_kernel}


def _middle_layer(package_dir) -> str:
    proto = onnx.load(str(package_dir / "model.onnx"))
    weights = {i.name for i in proto.graph.initializer}
    layers = [n for n in proto.graph.node
              if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in weights
              and len(n.input) > 2]
    return layers[len(layers) // 2].name


@pytest.fixture(scope="module")
def zoo_pt(tmp_path_factory):
    def save(name):
        model, inputs = ZOO[name]()
        return save_torchscript(model, inputs, tmp_path_factory.mktemp(name) / f"{name}.pt")

    return save


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "mlp", "mobilenet_v2"])
@pytest.mark.parametrize("fault", FAULTS)
def test_an_injected_fault_fails_validation_and_is_localised(name, fault, zoo_pt, tmp_path,
                                                             monkeypatch):
    pt = zoo_pt(name)
    clean = compile_model(CompileOptions(model=pt, output=tmp_path / "clean", java=False))
    assert clean.manifest["validation"]["status"] == "passed"
    layer = _middle_layer(clean.path)
    with injected(monkeypatch, FAULTS[fault], layer):
        result = invoke("compile", pt, "-o", tmp_path / "bad", "--no-java", "--allow-mismatch")
        assert "validation FAILED" in result.output, result.output
        result = invoke("validate", tmp_path / "bad", "--localize")
    assert result.exit_code == 1
    assert f"first differing layer: {'Gemm' if name == 'mlp' else 'Conv'} node '{layer}'" \
        in result.output, result.output


class _TwoBranches(nn.Module):
    """A convolution on one branch, two on the other, added: in graph order the first branch's
    convolution comes before the second branch's, which does not read it."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 3, padding=1)
        self.after = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.left(x) + self.after(torch.relu(self.right(x)))


@pytest.mark.slow
def test_a_fault_on_a_parallel_branch_is_localised_to_its_layer(tmp_path, monkeypatch):
    # Bisection first cuts after the right branch's convolution; compared alone, its output
    # matches, and the search went on to name the Add that joins the branches. Each cut
    # compares every tensor still live there, the left branch's output too.
    torch.manual_seed(0)
    pt = save_torchscript(_TwoBranches().eval(), [TensorSpec("x", (1, 8, 12, 12))],
                          tmp_path / "branches.pt")
    clean = compile_model(CompileOptions(model=pt, output=tmp_path / "clean", java=False))
    proto = onnx.load(str(clean.path / "model.onnx"))
    first = next(n.name for n in proto.graph.node if n.op_type == "Conv")
    with injected(monkeypatch, FAULTS["scale-1.001"], first):
        result = invoke("compile", pt, "-o", tmp_path / "bad", "--no-java", "--allow-mismatch")
        assert "validation FAILED" in result.output, result.output
        result = invoke("validate", tmp_path / "bad", "--localize")
    assert f"first differing layer: Conv node '{first}'" in result.output, result.output


def test_tiny_outputs_are_flagged_not_a_plain_pass():
    from deploytool.verify.comparison import compare
    from deploytool.verify.validate import ValidationReport

    rng = np.random.default_rng(0)
    ref = rng.standard_normal(10) * 1e-9
    comparisons = [compare("y", "onnxruntime", ref * (1 + 1e-7), ref)]
    report = ValidationReport(comparisons, ["onnxruntime"], 3, 0)
    assert report.passed and report.tiny == ["y"]
    assert report.status == "PASSED (tiny outputs, judged by their own scale)"
    assert "tiny: output 'y' is below 1e-06" in report.format()
    wrong = ValidationReport([compare("y", "onnxruntime", ref * 1.01, ref)], ["onnxruntime"], 3, 0)
    assert not wrong.passed and wrong.status == "FAILED"


def test_the_bound_follows_the_references_own_spread_up_to_a_limit():
    from types import SimpleNamespace

    from deploytool.verify.validate import ValidationOptions, _error_bounds

    package = SimpleNamespace(outputs=[SimpleNamespace(name="y"), SimpleNamespace(name="z")])
    ref = np.linspace(-1, 1, 50)
    runs = [(None, {"onnxruntime": [ref, ref], "torchscript": [ref * (1 + 2e-4), ref * (1 + 1)]})]
    notes: list[str] = []
    [bounds] = _error_bounds(package, runs, ValidationOptions(), notes)
    assert bounds["y"] == pytest.approx(2 * 2e-4)  # twice the references' own difference
    assert bounds["z"] == pytest.approx(5e-4)  # capped at 5x the default bound
    assert any("output 'y': the references differ by 0.0002" in n for n in notes)
    same = [(None, {"onnxruntime": [ref, ref], "torchscript": [ref, ref]})]
    assert _error_bounds(package, same, ValidationOptions(), []) == [{"y": 1e-4, "z": 1e-4}]


def test_the_bound_widens_to_the_fp32_references_own_error_against_float64():
    from types import SimpleNamespace

    from deploytool.verify.validate import ValidationOptions, _error_bounds

    package = SimpleNamespace(outputs=[SimpleNamespace(name="y"), SimpleNamespace(name="z")])
    ref = np.linspace(-1, 1, 50)
    runs = [(None, {"onnxruntime": [ref, ref], "torchscript": [ref, ref]})] * 2
    notes: list[str] = []
    bounds = _error_bounds(package, runs, ValidationOptions(), notes,
                           fp32_errors=[[2e-3, 1e-6], [1e-6, 1e-6]])
    # not capped (measured, not guessed), and only on the sample where fp32 rounds that much
    assert bounds == [{"y": pytest.approx(3 * 2e-3), "z": 1e-4}, {"y": 1e-4, "z": 1e-4}]
    assert notes == ["output 'y': the fp32 references differ from float64 by up to 0.002 of its "
                     "scale on some samples, so its bound there is up to 0.006"]


class _Sum(torch.nn.Module):
    def forward(self, x):
        return x.sum(-1, keepdim=True) - x.sum(-1, keepdim=True).detach() * 0.5


class _Float32Inside(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4, 4))

    def forward(self, x):
        return x @ self.w.float().t().contiguous().to(torch.float32)


def test_float64_reference_measures_fp32_rounding(tmp_path):
    from deploytool.verify.float64 import float64_results, fp32_error, torchscript_float64

    path = tmp_path / "sum.pt"
    torch.jit.save(torch.jit.script(_Sum()), str(path))
    x = np.random.default_rng(0).standard_normal((1, 100_000)).astype(np.float32) * 1e4
    fp32 = [np.asarray(_Sum()(torch.from_numpy(x)))]
    exact = 0.5 * x.astype(np.float64).sum(-1, keepdims=True)
    exact64 = float64_results(torchscript_float64(path), [[x]], 1)
    measured = fp32_error(exact64, [{"torchscript": fp32}])
    expected = float(np.abs(fp32[0] - exact).max() / np.abs(exact).max())
    assert measured == [[pytest.approx(expected, rel=1e-6)]] and expected > 1e-8


def test_a_model_with_float32_fixed_inside_has_no_float64_floor(tmp_path):
    from deploytool.verify.float64 import float64_results, fp32_error, torchscript_float64

    path = tmp_path / "fixed.pt"
    torch.jit.save(torch.jit.script(_Float32Inside()), str(path))
    x = np.ones((1, 4), np.float32)
    assert float64_results(torchscript_float64(path), [[x]], 1) is None
    assert fp32_error(None, [{"torchscript": [x]}]) is None


# ---------------------------------------------------------------------------------------------
# The same on the torch.export route: faults in a program's parameters, --localize on the FX graph


class _Branches(nn.Module):
    """Two branches of the input added: a fault in the short one shows in no node of the long
    one, so a bisection that looked only at the node it cuts after would pass it by."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.right = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x):
        return torch.relu(self.left(x) + self.right(x)).mean((2, 3))


def _branches():
    torch.manual_seed(0)
    return _Branches().eval(), [TensorSpec("x", (1, 3, 16, 16))]


# model -> (how to build it, the layer the fault goes into)
EXPORTED = {"cnn": (lambda: build_zoo_model("cnn"), "4"),
            "transformer": (lambda: build_zoo_model("transformer"),
                            "encoder.layers.1.self_attn.out_proj"),
            "branches": (_branches, "left")}
# MultiheadAttention's biases start at zero: dropping one changes nothing
OTHER_LAYER = {("transformer", "drop-bias"): "encoder.layers.1.linear1"}
LOCALIZED = re.compile(r"first differing layer: aten\.\w+ node '\w+' \(module '([^']*)', "
                       r"weights ([^)]*)\)")


@pytest.fixture(scope="module")
def zoo_pt2(tmp_path_factory):
    def save(name):
        model, inputs = EXPORTED[name][0]()
        return save_exported(model, inputs, tmp_path_factory.mktemp(name) / f"{name}.pt2")

    return functools.cache(save)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORTED)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_in_a_torch_export_program_fails_validation_and_is_localised(
        name, fault, zoo_pt2, compile_package, tmp_path, monkeypatch):
    if name == "branches" and fault != "scale-1.001":
        pytest.skip("one fault shows the branches are followed")
    pt2 = zoo_pt2(name)
    assert compile_package(pt2, java=False).manifest["validation"]["status"] == "passed"
    layer = OTHER_LAYER.get((name, fault), EXPORTED[name][1])
    with injected(monkeypatch, FAULTS[fault], layer):
        result = invoke("compile", pt2, "-o", tmp_path / "bad", "--no-java", "--allow-mismatch")
        assert "validation FAILED" in result.output, result.output
        result = invoke("validate", tmp_path / "bad", "--localize")
    assert result.exit_code == 1
    found = LOCALIZED.search(result.output)
    assert found, result.output
    module, weights = found.group(1), found.group(2).split(", ")
    assert f"{layer}.{FAULTS[fault].tensor}" in weights, result.output
    assert layer.startswith(module), result.output  # MultiheadAttention runs out_proj itself


def test_localize_names_the_missing_torch_export_model_in_one_line(tmp_path):
    from types import SimpleNamespace

    from deploytool.errors import DeploytoolError
    from deploytool.verify.localize import localize_package
    from deploytool.verify.validate import ValidationOptions

    package = SimpleNamespace(path=tmp_path, manifest={
        "model": {"format": "torch.export", "sha256": "0" * 64},
        "compile_options": {"model": str(tmp_path / "gone.pt2")}})
    with pytest.raises(DeploytoolError) as err:
        localize_package(package, ValidationOptions())
    assert "gone.pt2" in err.value.what and "--model" in err.value.fix


def test_zoo_injection_changes_only_biases_that_are_not_zero():
    from deploytool.testing.injection_coverage import program_layers

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.LayerNorm(4))
    nn.init.zeros_(model[2].bias)
    program = torch.export.export(model.eval(), (torch.randn(1, 4),))
    assert program_layers(program, "weight") == ["0", "2"]  # not the norm's vector
    assert program_layers(program, "bias") == ["0"]


def test_a_reference_far_from_float64_is_another_model_not_rounding():
    from deploytool.verify.float64 import faithful, fp32_error

    exact = np.linspace(-1, 1, 20)
    close, other = exact * (1 + 1e-3), exact[::-1].copy()
    errors = fp32_error([[exact]], [{"torchscript": [close], "onnxruntime": [other]}])
    assert errors == [[pytest.approx(1e-3)]]  # the other model widens nothing
    # nor is the package held to a float64 result that a reference is that far from
    assert faithful(exact, [close]) and not faithful(exact, [close, other])
    assert not faithful(exact.astype(np.int64), [close])


def test_localize_holds_cuts_to_half_an_error_seen_only_against_float64():
    from deploytool.verify.comparison import compare
    from deploytool.verify.validate import (
        ValidationOptions,
        ValidationReport,
        localize_options,
    )

    ref = np.linspace(-1, 1, 50)

    def report(**errors):
        return ValidationReport([compare("y", name, ref + error, ref, max_error=bound)
                                 for name, (error, bound) in errors.items()], list(errors), 1, 0)

    options = ValidationOptions()
    # BERT's wrong layer before a LayerNorm: 1.6e-5 off, inside 1e-4 of the references
    exact_only = report(onnxruntime=(1.6e-5, 1e-4), float64=(1.6e-5, 1.6e-6))
    assert localize_options(exact_only, options).max_error == pytest.approx(8e-6)
    # failing against a reference: the cuts keep the bound on the references
    both = report(onnxruntime=(1e-2, 1e-4), float64=(1e-2, 1.6e-6))
    assert localize_options(both, options) is options
    tiny = report(onnxruntime=(1.2e-6, 1e-4), float64=(1.2e-6, 1e-6))
    assert localize_options(tiny, options).max_error == 1e-6  # never under EXACT_FLOOR


def test_injection_table_tells_a_fault_below_rounding_from_a_miss(tmp_path):
    from deploytool.testing.injection_coverage import write_table

    clean = {"result": "PASSED", "status": "passed", "scaled_error": 3e-7}
    missed = {"layer": "q", "status": "passed", "result": "PASSED", "effect": 1e-4}
    below = {"layer": "q", "status": "passed", "result": "PASSED", "effect": 1.2e-6}
    caught = {"layer": "q", "status": "failed", "result": "FAILED", "effect": 1e-3,
              "localized": True, "builds": 5, "node": "addmm", "op": "aten.addmm"}
    rows = {"a.pt2": {"model": "a", "format": "pt2", "clean": clean,
                      "faults": {"scale-1.001": below, "drop-bias": {"layer": None},
                                 "transpose": caught}},
            "b.pt": {"model": "b", "format": "pt", "clean": clean,
                     "faults": {"scale-1.001": missed, "drop-bias": {"layer": None},
                                "transpose": caught}}}
    table = tmp_path / "injection.md"
    write_table(rows, table, "abc1234")
    text = table.read_text()
    assert "below rounding: moves the output by 1.2e-06 (PASSED)" in text
    assert "**missed** (PASSED)" in text  # 1e-4 is far above 5x the clean error
    assert "Caught 2/3 faults, localised 2/3." in text  # the one below rounding not counted


def test_injection_coverage_prints_and_tables_each_row_as_it_lands(tmp_path, monkeypatch, capsys):
    from deploytool.testing import injection_coverage

    clean = {"result": "PASSED", "status": "passed", "scaled_error": 3e-7}
    caught = {"layer": "q", "status": "failed", "result": "FAILED", "effect": 1e-3,
              "localized": True, "builds": 5, "node": "addmm", "op": "aten.addmm"}
    row = {"model": "hf_bert", "format": "pt2", "clean": clean,
           "faults": {"scale-1.001": caught, "drop-bias": {"layer": None}, "transpose": caught}}
    monkeypatch.setattr(injection_coverage, "_run_isolated", lambda *a: row)
    table = tmp_path / "table.md"
    assert injection_coverage.main(["hf_bert", "--formats", "pt2", "--work", str(tmp_path),
                                    "--table", str(table)]) == 0
    assert "hf_bert.pt2" in capsys.readouterr().out
    assert "| hf_bert | .pt2 | PASSED | caught, localised (5 builds) |" in table.read_text()


class _Cancelling(torch.nn.Module):
    """Eight products of about 0.3 that cancel to a few hundredths."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.3, -0.3, 0.31, -0.29, 0.3, -0.3, 0.3,
                                                     -0.3]]))

    def forward(self, x):
        return self.linear(x)


def test_rounded_weights_measure_the_rounding_that_cancellation_amplifies(tmp_path):
    from deploytool.verify.float64 import (
        ROUNDED_DRAWS,
        float64_results,
        fp32_error,
        torchscript_float64,
    )

    path = tmp_path / "cancel.pt"
    torch.jit.save(torch.jit.script(_Cancelling().eval()), str(path))
    x = np.array([[1.0, 1.0, 1.1, 1.0, 0.9, 1.0, 1.0, 0.9]], np.float32)
    exact = float64_results(torchscript_float64(path), [[x]], 1)
    perturbed = [float64_results(torchscript_float64(path, perturb=s), [[x]], 1)
                 for s in range(ROUNDED_DRAWS)]
    assert float(exact[0][0].squeeze()) == pytest.approx(0.051, abs=1e-6)
    # one rounding of each weight moves the 0.051 by about 2**-24 * 0.3 * sqrt(8): 5e-8, 1e-6 of
    # its scale; an exact reference alone would hold the package to EXACT_FLOOR
    measured = fp32_error(exact, [{"exact copy": exact[0]}], perturbed)
    assert 2e-7 < measured[0][0] < 1e-4
    assert fp32_error(exact, [{"exact copy": exact[0]}]) == [[0.0]]
