"""End to end: compile the examples, run the packages with no Python, compare with TorchScript."""

import hashlib
import json
import platform
import subprocess
import tarfile

import numpy as np
import pytest
import torch
from conftest import copy_package, run_clean, run_package

from deploytool.compiler import CompileOptions, compile_model
from deploytool.tensors import sample_inputs

pytestmark = pytest.mark.slow


def torchscript(model_pt, arrays):
    module = torch.jit.load(str(model_pt))
    with torch.no_grad():
        return module(*[torch.from_numpy(a) for a in arrays]).numpy()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_package_matches_torchscript_from_a_moved_copy(name, request, tmp_path):
    package = request.getfixturevalue(f"{name}_package")
    model_pt = request.getfixturevalue(f"{name}_pt")
    moved = copy_package(package.path, tmp_path / "elsewhere" / name)
    spec = package.inputs[0]
    x = sample_inputs([spec], seed=7)[0]
    outputs = run_package(moved, {spec.name: x}, tmp_path / "out")
    np.testing.assert_allclose(outputs["output"], torchscript(model_pt, [x]), atol=1e-5, rtol=0)


def test_manifest_records_what_made_the_package(mlp_package, mlp_pt):
    import tvm

    m = json.loads((mlp_package.path / "manifest.json").read_text())
    assert m["format_version"] == 1
    assert m["model"]["sha256"] == hashlib.sha256(mlp_pt.read_bytes()).hexdigest()
    assert m["inputs"] == [{"name": "x", "shape": [1, 512], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "output", "shape": [1, 2], "dtype": "float32"}]
    assert m["target"]["name"] == "cpu"
    assert m["target"]["resolved_cpu"] == tvm.target.codegen.llvm_get_system_cpu()
    assert m["target"]["target"]["mcpu"] == m["target"]["resolved_cpu"]
    assert m["runtime"]["arch"] == platform.machine()
    assert m["versions"]["tvm"] == "0.27.0.post1"
    assert m["versions"]["tvm_ffi"] == "0.1.14.post1"
    assert m["files"]["model.so"] == hashlib.sha256(
        (mlp_package.path / "model.so").read_bytes()).hexdigest()
    assert {"validation", "tuning", "benchmarks"} <= m.keys()


def test_package_layout(mlp_package):
    p = mlp_package.path
    for rel in ["model.so", "model.onnx", "manifest.json", "README.md", "lib/libtvm_runtime.so",
                "lib/libtvm_ffi.so", "lib/libdeploytool.so", "include/deploytool.h",
                "include/deploytool.hpp", "bin/deploytool-run", "examples/cpp/main.cc",
                "examples/cpp/CMakeLists.txt"]:
        assert (p / rel).is_file(), rel
    assert "g++ -std=c++17 examples/cpp/main.cc" in (p / "README.md").read_text()


def test_binaries_find_their_libraries_through_origin(mlp_package):
    for rel in ["bin/deploytool-run", "lib/libdeploytool.so"]:
        dynamic = subprocess.run(["readelf", "-d", mlp_package.path / rel], capture_output=True,
                                 text=True).stdout
        assert "$ORIGIN" in dynamic, rel


def test_cpp_example_builds_with_readme_command_and_runs_without_python(mlp_package, mlp_pt,
                                                                      tmp_path):
    moved = copy_package(mlp_package.path, tmp_path / "pkg")
    build = subprocess.run(["g++", "-std=c++17", "examples/cpp/main.cc", "-Iinclude", "-Llib",
                            "-ldeploytool", "-Wl,-rpath,$ORIGIN/lib", "-o", "example"],
                           cwd=moved, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    x = sample_inputs(mlp_package.inputs, seed=3)[0]
    np.save(moved / "x.npy", x)
    run = run_clean([moved / "example", ".", "x.npy"], cwd=moved)
    assert run.returncode == 0, run.stderr
    name, values = run.stdout.strip().split(":", 1)
    assert name == "output"
    np.testing.assert_allclose(np.array(values.split(), dtype=np.float32),
                               torchscript(mlp_pt, [x]).ravel(), atol=1e-5)


def test_cpp_example_builds_with_cmake(cnn_package, tmp_path):
    moved = copy_package(cnn_package.path, tmp_path / "pkg")
    for cmd in (["cmake", "-S", "examples/cpp", "-B", "build"], ["cmake", "--build", "build"]):
        proc = subprocess.run(cmd, cwd=moved, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    run = run_clean([moved / "build" / "example", moved])
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("output:") and len(run.stdout.split()) == 11


def test_runner_random_inputs_are_seeded(mlp_package, tmp_path):
    runner = mlp_package.runner
    outs = []
    for seed, sub in ((5, "a"), (5, "b"), (6, "c")):
        out = tmp_path / sub
        out.mkdir()
        proc = run_clean([runner, "--seed", seed, "--output-dir", out, "--repeat", 3])
        assert proc.returncode == 0, proc.stderr
        assert "runs: 3" in proc.stdout
        outs.append(np.load(out / "output.npy"))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_archive_holds_the_package(mlp_pt, tmp_path):
    package = compile_model(CompileOptions(model=mlp_pt, output=tmp_path / "m", archive=True))
    with tarfile.open(tmp_path / "m.tar.gz") as tar:
        names = tar.getnames()
    assert "m/model.so" in names and "m/bin/deploytool-run" in names
    assert package.path == tmp_path / "m"


def test_explicit_input_overrides_stored_shapes(compile_package, mlp_pt, tmp_path):
    from deploytool.tensors import parse_input_spec

    package = compile_package("mlp", inputs=[parse_input_spec("x:4x512:float32")])
    assert package.outputs[0].shape == (4, 2)
    x = sample_inputs(package.inputs, seed=1)[0]
    out = run_package(package.path, {"x": x}, tmp_path / "out")
    np.testing.assert_allclose(out["output"], torchscript(mlp_pt, [x]), atol=1e-5)


def test_onnx_file_compiles_directly(compile_package, mlp_package, tmp_path):
    package = compile_package(mlp_package.path / "model.onnx")
    assert package.manifest["model"]["format"] == "onnx"
    x = sample_inputs(package.inputs, seed=2)[0]
    a = run_package(package.path, {"x": x}, tmp_path / "a")["output"]
    b = run_package(mlp_package.path, {"x": x}, tmp_path / "b")["output"]
    np.testing.assert_allclose(a, b, atol=1e-6)
