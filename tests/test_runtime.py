"""The C API and runner on their own: refusing packages this machine cannot run, bad files."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import build_c_program, copy_package, run_clean

pytestmark = pytest.mark.slow


def edit_manifest(package_dir, change):
    path = package_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_refuses_a_cpu_without_the_compiled_features(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    edit_manifest(pkg, lambda m: m["runtime"]["cpu_features"].append("avx9000"))
    proc = run_clean([pkg / "bin" / "deploytool-run"])
    assert proc.returncode == 1
    assert "this CPU lacks features the package was compiled for (avx9000)" in proc.stderr


def test_refuses_another_architecture(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    edit_manifest(pkg, lambda m: m["runtime"].update(arch="aarch64"))
    proc = run_clean([pkg / "bin" / "deploytool-run"])
    assert proc.returncode == 1 and "compiled for aarch64" in proc.stderr


def test_not_a_package(mlp_package, tmp_path):
    proc = run_clean([mlp_package.runner, tmp_path])
    assert proc.returncode == 1 and "not a deploytool package" in proc.stderr


def test_corrupted_manifest(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    (pkg / "manifest.json").write_text('{"inputs": [')
    proc = run_clean([pkg / "bin" / "deploytool-run"])
    assert proc.returncode == 1 and "corrupted package" in proc.stderr


def test_npy_of_wrong_shape_or_dtype(mlp_package, tmp_path):
    for name, array in (("shape", np.zeros((1, 3), np.float32)),
                        ("dtype", np.zeros((1, 512), np.float64))):
        np.save(tmp_path / f"{name}.npy", array)
        proc = run_clean([mlp_package.runner, "--input", f"x={tmp_path / name}.npy"])
        assert proc.returncode == 1
        assert "needs float32 (1, 512)" in proc.stderr, proc.stderr


def test_unknown_input_name_and_bad_option(mlp_package, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 512), np.float32))
    proc = run_clean([mlp_package.runner, "--input", f"y={tmp_path}/x.npy"])
    assert proc.returncode == 1 and "no input named 'y'" in proc.stderr
    proc = run_clean([mlp_package.runner, "--input", "x.npy"])
    assert proc.returncode == 2 and "--input takes NAME=FILE.npy, got 'x.npy'" in proc.stderr
    proc = run_clean([mlp_package.runner, "--bogus"])
    assert proc.returncode == 2 and "unknown option" in proc.stderr


def test_unknown_device(mlp_package):
    proc = run_clean([mlp_package.runner, "--device", "tpu:0"])
    assert proc.returncode == 1 and "unknown device 'tpu:0'" in proc.stderr




def test_c_api_from_plain_c_with_aligned_and_unaligned_inputs(mlp_package, tmp_path):
    pkg = mlp_package.path
    check = build_c_program(Path(__file__).parent / "c" / "api_check.c", pkg, tmp_path)
    proc = run_clean([check, pkg])
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "0 x float32 1"  # identical outputs; index 5 is DT_ERR_ARGUMENT
    assert second == "dt_input_info: no input 5"


def test_output_dir_is_created(mlp_package, tmp_path):
    out = tmp_path / "a" / "b"
    proc = run_clean([mlp_package.runner, "--output-dir", out])
    assert proc.returncode == 0, proc.stderr
    assert np.load(out / "output.npy").shape == (1, 2)
    (tmp_path / "file").write_text("x")
    proc = run_clean([mlp_package.runner, "--output-dir", tmp_path / "file" / "sub"])
    assert proc.returncode == 1 and "cannot create the folder" in proc.stderr


def _bench_threads(runner, *env):
    proc = subprocess.run(["env", "-i", *env, str(runner), "--min-iters", "1", "--min-seconds",
                           "0", "--warmup-ms", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"threads (\S+)", proc.stdout).group(1)


def test_the_package_runs_on_every_physical_core_by_default(mlp_package):
    """TVM's own default halves the logical CPUs on x86 (it assumes hyperthreads): on a machine
    with one thread per core that was half the cores."""
    import psutil

    assert _bench_threads(mlp_package.runner) == str(psutil.cpu_count(logical=False))
    assert _bench_threads(mlp_package.runner, "TVM_NUM_THREADS=1") == "1"  # the host decides


def test_c_api_profiles_each_kernel_of_the_runs_in_between(mlp_package, tmp_path):
    pkg = mlp_package.path
    check = build_c_program(Path(__file__).parent / "c" / "profile_check.c", pkg, tmp_path)
    proc = run_clean([check, pkg])
    assert proc.returncode == 0, proc.stderr
    calls, rest = proc.stdout.split("---\n")
    rows = [line.split(" ") for line in calls.splitlines()]
    # The MLP's three Linear layers, in call order; only the 3 runs while profiling counted.
    matmuls = [name for _, _, name in rows if "matmul" in name]
    assert len(matmuls) == 3, rows
    assert all(runs == "3" and float(us) > 0 for us, runs, _ in rows), rows
    assert not any(name.startswith("vm.builtin.") for _, _, name in rows)
    # Starting again forgets them; a buffer of 0 bytes is DT_ERR_ARGUMENT (1).
    assert rest == "[] 1\n"
