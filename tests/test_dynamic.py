"""Dynamic batch: one package compiled with a symbolic dimension runs every size up to its bound."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_c_program, copy_package, run_clean, run_package

from deploytool.cli import main
from deploytool.errors import DeploytoolError, UsageError
from deploytool.frontends.dynamic import validation_sizes
from deploytool.frontends.load import load_model
from deploytool.package.manifest import load_package
from deploytool.tensors import TensorSpec, parse_input_spec, parse_inputs_json, symbol_bounds


def torchscript_outputs(model_path: Path, array: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(model_path))
    with torch.no_grad():
        return module(torch.from_numpy(array)).numpy()


@pytest.fixture(scope="module")
def cnn_dynamic(compile_package):
    """The CNN with a batch of 1 to 8, validated by the compile (at 1, 2 and 8), and the lines
    its compile logged."""
    package = compile_package("cnn", inputs=[parse_input_spec("image:N<=8x3x32x32:float32")],
                              java=False)
    return package, compile_package.log(package)


@pytest.fixture(scope="module")
def mlp_dynamic(compile_package):
    """The MLP with an unbounded batch."""
    return compile_package("mlp", inputs=[parse_input_spec("x:Batchx512")], java=False)


# --- specs ---------------------------------------------------------------------------------------

def test_symbolic_specs_parse_print_and_round_trip():
    spec = parse_input_spec("x:N<=32x3x224x224:float32")
    assert spec.shape == ("N", 3, 224, 224) and spec.bound("N") == 32
    assert str(spec) == "x:N<=32x3x224x224:float32"
    assert parse_input_spec(str(spec)) == spec
    assert spec.to_dict() == {"name": "x", "shape": ["N", 3, 224, 224], "dtype": "float32",
                              "bounds": {"N": 32}}
    assert TensorSpec.from_dict(spec.to_dict()) == spec
    unbounded = parse_input_spec("t:Batch,Max_len<=128:int64")  # commas: names with an x
    assert unbounded.shape == ("Batch", "Max_len") and unbounded.bound("Batch") is None
    assert parse_input_spec(str(unbounded)) == unbounded
    assert parse_inputs_json(json.dumps([spec.to_dict()])) == [spec]
    assert "bounds" not in parse_input_spec("x:1x512").to_dict()  # static manifests unchanged


@pytest.mark.parametrize("text, message", [
    ("x:N<32x3:float32", "malformed shape"),
    ("x:N<=x3:float32", "malformed shape"),
    ("x:3Nx3:float32", "malformed shape"),
    ("x:nx3:float32", "'n' is not a size or a symbolic dimension"),
    ("x:N<=0x3:float32", "bounds 'N' by 0"),
    ("x:N<=4xN<=8:float32", "two upper bounds"),
    ("x:N<=-1x3:float32", "malformed shape"),
])
def test_malformed_symbolic_specs(text, message):
    with pytest.raises(UsageError, match=message):
        parse_input_spec(text)


def test_a_symbol_has_one_bound_across_inputs():
    a, b = parse_input_spec("a:N<=4x2"), parse_input_spec("b:N<=8x3")
    with pytest.raises(UsageError, match="symbol 'N' has upper bound 4 on one input and 8"):
        symbol_bounds([a, b])
    assert symbol_bounds([a, parse_input_spec("b:Nx3")]) == {"N": 4}


def test_cli_rejects_a_malformed_symbolic_spec(mlp_pt, tmp_path):
    result = CliRunner().invoke(main, ["compile", str(mlp_pt), "-i", "x:N<=zx512",
                                       "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "malformed shape 'N<=zx512'" in result.output
    assert not (tmp_path / "o").exists()


def test_validation_sizes_default_and_bounds():
    bounded = [parse_input_spec("x:N<=32x4")]
    assert validation_sizes(bounded) == [1, 2, 32]
    assert validation_sizes([parse_input_spec("x:N<=1x4")]) == [1]
    assert validation_sizes([parse_input_spec("x:Nx4")]) == [1, 2, 8]
    assert validation_sizes(bounded, (4, 1)) == [1, 4]
    with pytest.raises(DeploytoolError, match="exceeds the package's upper bound 32"):
        validation_sizes(bounded, (1, 33))


def test_torch_export_archives_refuse_symbolic_dims(tmp_path):
    import torch

    program = torch.export.export(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    with pytest.raises(DeploytoolError, match="symbolic dimensions .* not supported for torch"):
        load_model(tmp_path / "m.pt2", [parse_input_spec("x:N<=4x4")])


# --- packages ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_manifest_records_symbols_and_bounds(cnn_dynamic):
    package, _ = cnn_dynamic
    manifest = package.manifest
    assert manifest["inputs"] == [{"name": "image", "shape": ["N", 3, 32, 32],
                                   "dtype": "float32", "bounds": {"N": 8}}]
    assert manifest["outputs"] == [{"name": "output", "shape": ["N", 10], "dtype": "float32",
                                    "bounds": {"N": 8}}]
    assert manifest["compile_options"]["inputs"] == ["image:N<=8x3x32x32:float32"]


@pytest.mark.slow
def test_compile_validates_at_several_sizes(cnn_dynamic):
    package, lines = cnn_dynamic
    validation = package.manifest["validation"]
    assert validation["status"] == "passed" and validation["batch_sizes"] == [1, 2, 8]
    assert set(validation["references"]) == {"onnxruntime", "torchscript", "float64"}
    assert any("batch sizes 1, 2, 8" in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_cnn_runs_every_batch_up_to_the_bound(cnn_dynamic, cnn_pt, batch, tmp_path):
    package, _ = cnn_dynamic
    x = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
    out = run_package(package.path, {"image": x}, tmp_path)["output"]
    assert out.shape == (batch, 10)
    np.testing.assert_allclose(out, torchscript_outputs(cnn_pt, x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 8, 20])
def test_unbounded_mlp_runs_any_batch(mlp_dynamic, mlp_pt, batch, tmp_path):
    x = np.random.default_rng(batch).uniform(-1, 1, (batch, 512)).astype(np.float32)
    out = run_package(mlp_dynamic.path, {"x": x}, tmp_path)["output"]
    assert out.shape == (batch, 2)
    np.testing.assert_allclose(out, torchscript_outputs(mlp_pt, x), atol=1e-5, rtol=1e-5)
    assert mlp_dynamic.manifest["inputs"][0]["shape"] == ["Batch", 512]
    assert "bounds" not in mlp_dynamic.manifest["inputs"][0]


@pytest.mark.slow
def test_batch_above_the_bound_and_wrong_static_dims_are_refused(cnn_dynamic, tmp_path):
    package, _ = cnn_dynamic
    np.save(tmp_path / "big.npy", np.zeros((9, 3, 32, 32), np.float32))
    proc = run_clean([package.runner, "--input", f"image={tmp_path / 'big.npy'}"])
    assert proc.returncode == 1
    assert "dimension 0 (N) is 9, above the package's upper bound N<=8" in proc.stderr
    np.save(tmp_path / "odd.npy", np.zeros((2, 3, 31, 32), np.float32))
    proc = run_clean([package.runner, "--input", f"image={tmp_path / 'odd.npy'}"])
    assert proc.returncode == 1
    assert "dimension 2 is 31 but the model takes (N<=8, 3, 32, 32)" in proc.stderr


@pytest.mark.slow
def test_runner_random_inputs_self_test_and_shape_option(cnn_dynamic, tmp_path):
    package, _ = cnn_dynamic
    proc = run_clean([package.runner, "--self-test"])
    assert proc.returncode == 0 and "self-test PASSED" in proc.stdout, proc.stderr
    assert np.load(package.path / "testdata" / "input0.npy").shape == (2, 3, 32, 32)
    proc = run_clean([package.runner, "--shape", "image=5x3x32x32", "--output-dir", tmp_path])
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "output.npy").shape == (5, 10)
    proc = run_clean([package.runner, "--output-dir", tmp_path])  # batch 1 by default
    assert proc.returncode == 0 and np.load(tmp_path / "output.npy").shape == (1, 10)
    proc = run_clean([package.runner, "--shape", "image=5x3x32"])
    assert proc.returncode == 1 and "has 4 dimensions, the shape given has 3" in proc.stderr
    proc = run_clean([package.runner, "--shape", "image=5xq"])
    assert proc.returncode == 2 and "--shape takes NAME=SIZExSIZE" in proc.stderr


@pytest.mark.slow
def test_c_api_dt_run_shaped(cnn_dynamic, cnn_pt, tmp_path):
    package, _ = cnn_dynamic
    pkg = package.path
    check = build_c_program(Path(__file__).parent / "c" / "dynamic_check.c", pkg, tmp_path)
    proc = run_clean([check, pkg, 3, 9])
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr.splitlines()
    assert log[0] == f"info -1 8 {8 * 3 * 32 * 32 * 4} -1 {8 * 10 * 4}"  # nbytes at the bound
    assert log[1].startswith("dt_run 1 dt_run: the package has symbolic dimensions")
    assert "dt_run_shaped" in log[1]
    assert log[2] == "output shape 3 10"
    assert log[3] == "aligned and unaligned agree"
    assert log[4] == "dlpack 3 agrees"
    assert log[5].startswith("too big 1 dt_run_shaped: input 'image' dimension 0 (N) is 9")
    i = np.arange(3 * 3 * 32 * 32)
    x = (((i * 37) % 11).astype(np.float32) / np.float32(11) - np.float32(0.5))
    expected = torchscript_outputs(cnn_pt, x.reshape(3, 3, 32, 32))
    actual = np.array([float(v) for v in proc.stdout.split()], np.float32).reshape(3, 10)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_validate_command_batch_sizes(cnn_dynamic, mlp_package, tmp_path):
    package = load_package(copy_package(cnn_dynamic[0].path, tmp_path / "pkg"))
    runner = CliRunner()
    result = runner.invoke(main, ["validate", str(package.path), "--batch-sizes", "1,5",
                                  "--record"])
    assert result.exit_code == 0, result.output
    assert "batch sizes 1, 5" in result.output and "validation PASSED" in result.output
    assert load_package(package.path).manifest["validation"]["batch_sizes"] == [1, 5]
    result = runner.invoke(main, ["validate", str(package.path), "--batch-sizes", "4,9"])
    assert result.exit_code == 1
    assert "exceeds the package's upper bound 8" in result.output
    result = runner.invoke(main, ["validate", str(package.path), "--batch-sizes", "0,2"])
    assert result.exit_code == 2 and "not positive sizes" in result.output
    result = runner.invoke(main, ["validate", str(mlp_package.path), "--batch-sizes", "2"])
    assert result.exit_code == 1 and "has static shapes" in result.output


@pytest.mark.slow
def test_onnx_with_a_named_dynamic_axis_compiles_as_dynamic(compile_package, mlp_pt, tmp_path):
    import torch

    module = torch.jit.load(str(mlp_pt))
    torch.onnx.export(module, (torch.zeros(2, 512),), str(tmp_path / "m.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    package = compile_package(tmp_path / "m.onnx", java=False)
    assert package.manifest["inputs"][0]["shape"] == ["batch", 512]
    assert package.manifest["outputs"][0]["shape"] == ["batch", 2]
    assert package.manifest["validation"]["batch_sizes"] == [1, 2, 8]
    x = np.random.default_rng(0).uniform(-1, 1, (5, 512)).astype(np.float32)
    out = run_package(package.path, {"x": x}, tmp_path / "run")["y"]
    np.testing.assert_allclose(out, torchscript_outputs(mlp_pt, x), atol=1e-5, rtol=1e-5)
    static = compile_package(tmp_path / "m.onnx", inputs=[parse_input_spec("x:3x512")],
                             java=False)
    assert static.manifest["outputs"][0]["shape"] == [3, 2]  # was refused as symbolic before


@pytest.mark.slow
def test_java_refuses_a_dynamic_package(compile_package, tmp_path):
    from test_java import build_example, java_run

    from deploytool.toolchains.java import find_jdk

    try:
        jdk = find_jdk()
    except DeploytoolError as err:
        pytest.skip(f"needs a JDK 11+: {err}")
    package = compile_package("mlp", inputs=[parse_input_spec("x:N<=4x512")], java=True,
                              validate=False)
    proc = java_run(jdk, build_example(jdk, package.path), package.path)
    assert proc.returncode == 1
    assert "symbolic dimension (input 'x', a dynamic batch)" in proc.stderr
    assert "dt_run_shaped" in proc.stderr


@pytest.mark.slow
def test_cpp_example_runs_a_dynamic_package(cnn_dynamic, cnn_pt, tmp_path):
    package, _ = cnn_dynamic
    pkg = package.path
    build = subprocess.run(["g++", "-std=c++17", str(pkg / "examples/cpp/main.cc"),
                            f"-I{pkg}/include", f"-L{pkg}/lib", "-ldeploytool",
                            f"-Wl,-rpath,{pkg}/lib", "-o", str(tmp_path / "example")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    x = np.random.default_rng(3).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_clean([tmp_path / "example", pkg, tmp_path / "x.npy"])
    assert proc.returncode == 0, proc.stderr
    assert "(30 values)" in proc.stdout  # batch 3 x 10 classes
    first = np.array(proc.stdout.split(":")[1].split()[:16], np.float32)
    expected = torchscript_outputs(cnn_pt, x).ravel()[:16]
    np.testing.assert_allclose(first, expected, atol=1e-5, rtol=1e-5)
    proc = run_clean([tmp_path / "example", pkg])  # no file: batch 1
    assert proc.returncode == 0 and "(30 values)" not in proc.stdout, proc.stderr
    assert "## Dynamic shapes" in (pkg / "README.md").read_text()
