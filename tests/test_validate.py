"""deploytool validate, validation inside compile, and the package's own self-test."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import copy_package, run_clean

from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.package.manifest import load_package
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import mlp, save_torchscript
from deploytool.verify import validate as validate_module
from deploytool.verify.validate import ValidationOptions, make_inputs, validate_package


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def other_mlp_pt(tmp_path_factory):
    """The MLP's architecture with different weights: a model that differs from the package."""
    torch.manual_seed(123)
    model, inputs = mlp()
    return save_torchscript(model, inputs, tmp_path_factory.mktemp("other") / "other.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_examples_validate_against_both_references(name, request, tmp_path):
    package = request.getfixturevalue(f"{name}_package")
    model = request.getfixturevalue(f"{name}_pt")
    report_path = tmp_path / "report.json"
    result = invoke("validate", package.path, "--model", model, "--samples", 2, "--json",
                    report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    references = ["onnxruntime", "torchscript", "float64"]
    assert report["passed"] and report["references"] == references
    assert {c["reference"] for c in report["comparisons"]} == set(references)
    assert all(c["max_abs_error"] < 1e-5 for c in report["comparisons"])
    assert "validation PASSED" in result.output


@pytest.mark.slow
def test_compile_records_a_passed_validation(mlp_package):
    validation = mlp_package.manifest["validation"]
    assert validation["status"] == "passed" and validation["passed"]
    assert validation["references"] == ["onnxruntime", "torchscript", "float64"]


@pytest.mark.slow
def test_a_different_model_fails_and_names_the_output(mlp_package, other_mlp_pt, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    result = invoke("validate", pkg, "--model", other_mlp_pt, "--record")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.endswith("FAILED")]
    assert len(failed) == 1 and failed[0].split()[:2] == ["output", "torchscript"]
    assert "differs from the file the package was compiled from" in result.output
    assert "Error: validation FAILED" in result.output
    assert json.loads((pkg / "manifest.json").read_text())["validation"]["status"] == "failed"


@pytest.mark.slow
def test_a_swapped_model_so_fails_against_both_references(compile_package, mlp_package,
                                                         other_mlp_pt, tmp_path):
    other = compile_package(other_mlp_pt)
    import hashlib

    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    (pkg / "model.so").write_bytes((other.path / "model.so").read_bytes())
    proc = run_clean([pkg / "bin" / "deploytool-run", "--verify"])
    assert proc.returncode == 1 and "model.so does not match its sha256" in proc.stderr
    proc = run_clean([pkg / "bin" / "deploytool-run"])  # refused before it runs, too
    assert proc.returncode == 1 and "model.so does not match its sha256" in proc.stderr
    # Re-signed (sha256 and size to match), only the comparison with the references can catch it.
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["model.so"] = hashlib.sha256((pkg / "model.so").read_bytes()).hexdigest()
    manifest["file_sizes"]["model.so"] = (pkg / "model.so").stat().st_size
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    report = validate_package(load_package(pkg))
    assert not report.passed
    assert {c.reference for c in report.comparisons if not c.passed} == {
        "onnxruntime", "torchscript", "float64"}


@pytest.mark.slow
def test_perturbed_outputs_fail_with_the_error_size(mlp_package):
    def perturbed(package, arrays):
        outputs = validate_module.run_native(package, arrays)
        outputs[0] = outputs[0].copy()
        outputs[0][0, 1] += 1e-3
        return outputs

    report = validate_package(mlp_package, ValidationOptions(), native=perturbed)
    assert not report.passed
    for c in report.comparisons:
        assert c.output == "output" and c.worst_index == [0, 1]
        assert c.max_abs_error == pytest.approx(1e-3, rel=1e-2)
    relaxed = ValidationOptions(max_error=0.01, tolerances={"output": (2e-3, 0.0)})
    assert validate_package(mlp_package, relaxed, native=perturbed).passed


@pytest.mark.slow
@pytest.mark.parametrize("shift, passed", [(1.5e-5, False), (5e-7, True)])
def test_the_package_is_held_to_the_float64_result(mlp_package, shift, passed):
    # A wrong layer before a LayerNorm (Hugging Face BERT) moved the output by 1.6e-5 of its
    # scale: within the 1e-4 bound on the fp32 references, but far from the float64 result,
    # which they are within 3e-7 of. A difference of the size of rounding still passes.
    def shifted(package, arrays):
        outputs = validate_module.run_native(package, arrays)
        scale = float(np.abs(outputs[0]).max())
        outputs[0] = (outputs[0] + np.float32(shift * scale)).astype(np.float32)
        return outputs

    report = validate_package(mlp_package, ValidationOptions(), native=shifted)
    exact = [c for c in report.comparisons if c.reference == "float64"]
    assert exact and report.passed == passed, report.format()
    assert all(c.passed for c in report.comparisons if c.reference != "float64")
    assert "against float64" in report.format()


@pytest.mark.slow
def test_failing_validation_fails_the_compile_and_leaves_nothing(mlp_pt, tmp_path, monkeypatch):
    real = validate_module.run_native

    def wrong(package, arrays):
        return [o + 1.0 for o in real(package, arrays)]

    monkeypatch.setattr(validate_module, "run_native", wrong)
    out = tmp_path / "pkg"
    result = invoke("compile", mlp_pt, "-o", out)
    assert result.exit_code == 1
    assert "Error: validation FAILED: output 'output' differs from" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    result = invoke("compile", mlp_pt, "-o", out, "--allow-mismatch")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["validation"]["status"] == "failed"


@pytest.mark.slow
def test_no_validate_marks_the_package(mlp_pt, tmp_path):
    result = invoke("compile", mlp_pt, "-o", tmp_path / "p", "--no-validate")
    assert result.exit_code == 0 and "validation skipped" in result.output
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["validation"] == {"status": "skipped"}


@pytest.mark.slow
def test_self_test_passes_on_a_moved_copy_without_python(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "moved")
    proc = run_clean([pkg / "bin" / "deploytool-run", "--self-test"])
    assert proc.returncode == 0, proc.stderr
    assert "self-test PASSED" in proc.stdout


@pytest.mark.slow
def test_self_test_detects_wrong_reference_outputs(mlp_package, tmp_path):
    """Perturb the stored reference and re-sign it, so only the comparison can catch it."""
    import hashlib

    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    ref_path = pkg / "testdata" / "output0.npy"
    ref = np.load(ref_path)
    ref[0, 0] += 0.5
    np.save(ref_path, ref)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["testdata/output0.npy"] = hashlib.sha256(ref_path.read_bytes()).hexdigest()
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    proc = run_clean([pkg / "bin" / "deploytool-run", "--self-test"])
    assert proc.returncode == 1
    assert "output: max abs error 0.5" in proc.stdout and "FAILED" in proc.stdout
    assert "self-test FAILED for output(s) output" in proc.stderr


@pytest.mark.slow
def test_truncated_model_so_is_reported_not_crashed(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    data = (pkg / "model.so").read_bytes()
    (pkg / "model.so").write_bytes(data[: len(data) // 3])
    proc = run_clean([pkg / "bin" / "deploytool-run", "--verify"])
    assert proc.returncode == 1 and "corrupted package: model.so" in proc.stderr
    proc = run_clean([pkg / "bin" / "deploytool-run"])
    assert proc.returncode == 1 and "model.so is missing or has the wrong size" in proc.stderr
    result = invoke("validate", pkg)  # checked against the manifest's digests, never run
    assert result.exit_code == 1 and "is damaged: model.so does not match" in result.output


@pytest.mark.slow
def test_bad_validate_inputs(mlp_package, cnn_pt, tmp_path):
    assert "not a deploytool package" in invoke("validate", tmp_path).output
    result = invoke("validate", mlp_package.path, "--model", cnn_pt)
    assert result.exit_code == 1 and "does not match the package's inputs" in result.output
    (tmp_path / "in").mkdir()
    result = invoke("validate", mlp_package.path, "--inputs", tmp_path / "in")
    assert result.exit_code == 1 and "x.npy not found" in result.output
    np.save(tmp_path / "in" / "x.npy", np.zeros((2, 512), np.float32))
    result = invoke("validate", mlp_package.path, "--inputs", tmp_path / "in")
    assert result.exit_code == 1 and "needs float32 (1, 512)" in result.output
    result = invoke("validate", mlp_package.path, "--range", "nope:0:1")
    assert result.exit_code == 1 and "unknown input(s) nope" in result.output
    result = invoke("validate", mlp_package.path, "--tol", "nope:0:1")
    assert result.exit_code == 1 and "unknown output(s) nope" in result.output
    result = invoke("validate", mlp_package.path, "--tol", "output:x")
    assert result.exit_code == 2 and "NAME:NUMBER:NUMBER" in result.output
    assert invoke("validate", mlp_package.path, "--samples", 0).exit_code == 2


@pytest.mark.slow
def test_real_inputs_from_a_folder(mlp_package, mlp_pt, tmp_path):
    x = np.full((1, 512), 0.25, np.float32)
    np.save(tmp_path / "x.npy", x)
    result = invoke("validate", mlp_package.path, "--model", mlp_pt, "--inputs", tmp_path)
    assert result.exit_code == 0, result.output


def test_input_ranges_and_integer_inputs():
    specs = [TensorSpec("ids", (1000,), "int64"), TensorSpec("x", (1000,), "float32")]
    ids, x = make_inputs(specs, seed=1, ranges={"ids": (5, 8), "x": (2.0, 3.0)})
    assert ids.dtype == np.int64 and set(np.unique(ids)) == {5, 6, 7}
    assert x.dtype == np.float32 and x.min() >= 2.0 and x.max() < 3.0
    again = make_inputs(specs, seed=1, ranges={"ids": (5, 8), "x": (2.0, 3.0)})
    np.testing.assert_array_equal(again[1], x)
    with pytest.raises(DeploytoolError, match="empty integer range"):
        make_inputs(specs, seed=1, ranges={"ids": (5, 5)})


@pytest.mark.slow
def test_a_cpu_this_machine_lacks_leaves_validation_pending(mlp_pt, tmp_path):
    """AMD Piledriver code (FMA4, XOP) is built, not validated, and refused at load here."""
    target = json.dumps({"target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                    "mcpu": "bdver2"}})
    out = tmp_path / "pkg"
    result = invoke("compile", mlp_pt, "--target", target, "-o", out)
    if "fma4" in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has FMA4")
    assert result.exit_code == 0, result.output
    assert "validation pending" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"] == {"status": "pending"}
    assert {"fma4", "xop"} <= set(manifest["runtime"]["cpu_features"])
    proc = run_clean([out / "bin" / "deploytool-run", "--self-test"])
    assert proc.returncode == 1
    assert "this CPU lacks features the package was compiled for" in proc.stderr
    assert "fma4" in proc.stderr and "Illegal" not in proc.stderr
