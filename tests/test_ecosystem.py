"""A package in the user's world: Python with numpy only, CMake find_package, pkg-config."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_package, run_clean

import deploytool

pytestmark = pytest.mark.slow  # every test needs a compiled package

ROOT = Path(deploytool.__file__).resolve().parent.parent

# Runs in a fresh interpreter where importing TVM, torch or ONNX raises: the runtime needs none.
NUMPY_ONLY = textwrap.dedent("""
    import sys, numpy as np
    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"tvm", "tvm_ffi", "torch", "onnx", "onnxruntime", "click"}:
                raise ImportError(f"{name} is not allowed here")
    sys.meta_path.insert(0, Blocked())
    import deploytool.runtime as dt
    package = sys.argv[1]
    model = dt.load(package)
    x = np.load(f"{package}/testdata/input0.npy")
    out = model.run({model.inputs[0].name: x})
    np.save(sys.argv[2], out[model.outputs[0].name])
    print(model.inputs[0], model.self_test()[0])
""")


def _python_with_only(tmp_path: Path, code: str, *args, python=sys.executable, path=ROOT):
    script = tmp_path / "script.py"
    script.write_text(code)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(path)}
    return subprocess.run([python, str(script), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_python_runs_a_package_without_tvm_torch_or_onnx(mlp_package, tmp_path):
    proc = _python_with_only(tmp_path, NUMPY_ONLY, mlp_package.path, tmp_path / "out.npy")
    assert proc.returncode == 0, proc.stderr
    assert "name='x'" in proc.stdout and proc.stdout.strip().endswith("True")
    expected = np.load(mlp_package.path / "testdata" / "output0.npy")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=1e-5)


def test_python_runtime_in_a_fresh_venv_with_only_numpy(mlp_package, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "numpy"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"numpy cannot be installed here: {pip.stderr.strip()[-200:]}")
    shipped = tmp_path / "site" / "deploytool"
    (shipped / "runtime").mkdir(parents=True)
    shutil.copy2(ROOT / "deploytool" / "__init__.py", shipped)
    for name in ("__init__.py", "binding.py"):
        shutil.copy2(ROOT / "deploytool" / "runtime" / name, shipped / "runtime")
    proc = _python_with_only(tmp_path, NUMPY_ONLY, mlp_package.path, tmp_path / "out.npy",
                             python=venv / "bin" / "python", path=tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    expected = np.load(mlp_package.path / "testdata" / "output0.npy")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=1e-5)


def test_python_runtime_errors_carry_the_c_api_message(mlp_package, tmp_path):
    import deploytool.runtime as dt

    with pytest.raises(dt.PackageError, match="not a deploytool package"):
        dt.load(tmp_path)
    model = dt.load(mlp_package.path)
    with pytest.raises(dt.PackageError, match="input 'x' needs float32") as err:
        model.run({"x": np.zeros((1, 512), np.float64)})
    assert err.value.kind == "argument"
    with pytest.raises(dt.PackageError, match=r"takes inputs \['x'\]"):
        model.run({"y": np.zeros((1, 512), np.float32)})
    broken = copy_package(mlp_package.path, tmp_path / "broken")
    (broken / "model.so").write_bytes(b"\0" * 64)
    with pytest.raises(dt.PackageError) as err:
        dt.verify(broken)
    assert err.value.kind == "package" and "model.so" in str(err.value)


def test_python_runtime_profiles_and_self_tests(mlp_package):
    import deploytool.runtime as dt

    with dt.load(mlp_package.path) as model:
        passed, report = model.self_test()
        assert passed and "self-test PASSED" in report
        x = np.load(mlp_package.path / "testdata" / "input0.npy")
        model.profile(True)
        for _ in range(3):
            model.run([x])
        model.profile(False)
        kernels = model.profile_report()
        assert len(kernels) == 3 and all(runs == 3 and us > 0 for us, runs, _ in kernels)
        assert all("matmul" in name for _, _, name in kernels)


def _example_output(package: Path, exe: Path) -> np.ndarray:
    run = run_clean([exe, package, package / "testdata" / "input0.npy"])
    assert run.returncode == 0, run.stderr
    return np.array(run.stdout.split(":", 1)[1].split(), dtype=np.float32)


def test_a_cmake_project_links_a_package_with_find_package(mlp_package, tmp_path):
    package = copy_package(mlp_package.path, tmp_path / "pkg")
    project = tmp_path / "app"
    project.mkdir()
    shutil.copy2(package / "examples" / "cpp" / "main.cc", project)
    (project / "CMakeLists.txt").write_text(textwrap.dedent("""
        cmake_minimum_required(VERSION 3.16)
        project(app CXX)
        set(CMAKE_CXX_STANDARD 17)
        find_package(deploytool 0.1 REQUIRED)
        add_executable(app main.cc)
        target_link_libraries(app PRIVATE deploytool::deploytool)
    """))
    for cmd in (["cmake", "-S", project, "-B", project / "build", f"-DCMAKE_PREFIX_PATH={package}"],
                ["cmake", "--build", project / "build"]):
        proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = np.load(package / "testdata" / "output0.npy").ravel()
    np.testing.assert_allclose(_example_output(package, project / "build" / "app"), expected,
                               atol=1e-5)


def test_a_makefile_project_links_a_package_with_pkg_config(mlp_package, tmp_path):
    package = copy_package(mlp_package.path, tmp_path / "pkg")
    proc = subprocess.run(["make", "-C", str(package / "examples" / "cpp")], capture_output=True,
                          text=True, env={**os.environ, "PKG_CONFIG_PATH": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**os.environ, "PKG_CONFIG_PATH": str(package / "lib" / "pkgconfig")}
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "deploytool"], text=True,
                           capture_output=True, env=env)
    assert f"-I{package}/lib/pkgconfig/../../include" in flags.stdout
    expected = np.load(package / "testdata" / "output0.npy").ravel()
    np.testing.assert_allclose(_example_output(package, package / "examples" / "cpp" / "example"),
                               expected, atol=1e-5)
