"""ARM64 cross-compilation: targets, every binary aarch64, runs under qemu, wrong combinations."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import depthwise, residual_conv

from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.frontends.load import load_model
from deploytool.frontends.torchscript import run_torchscript
from deploytool.targets import load_target
from deploytool.tensors import sample_inputs
from deploytool.testing.examples import mlp, save_torchscript
from deploytool.toolchains import emulation as runners
from deploytool.toolchains.emulation import can_run, runner_command
from deploytool.toolchains.tvm_runtime import elf_arch

ARM_TARGETS = ("arm64", "raspberry-pi-4", "raspberry-pi-5", "jetson-orin-cpu")
CROSS_CXX = "aarch64-linux-gnu-g++"
BINARIES = ("model.so", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "lib/libdeploytool.so",
            "bin/deploytool-run")
on_x86 = pytest.mark.skipif(platform.machine() != "x86_64", reason="needs an x86_64 host")


def needs_cross():
    """Skip, saying what to install, unless the cross toolchain and qemu are here."""
    if shutil.which(CROSS_CXX) is None:
        pytest.skip(f"needs {CROSS_CXX} (apt-get install g++-aarch64-linux-gnu)")
    if not can_run("aarch64"):
        pytest.skip("needs qemu-aarch64-static (apt-get install qemu-user-static)")


@pytest.fixture(scope="module")
def arm_packages(compile_package):
    """The example MLP and CNN compiled for arm64: {name: (package, source model)}."""
    needs_cross()
    packages = {}
    for name in ("mlp", "cnn"):
        try:
            package = compile_package(name, "arm64")
        except DeploytoolError as err:
            if "could not download" in str(err):
                pytest.skip(f"the aarch64 TVM runtime is not cached and cannot be fetched: {err}")
            raise
        packages[name] = (package, load_model(compile_package.model_path(name)))
    return packages


def run_arm(runner: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run an aarch64 binary under the runner registry's prefix, in a clean environment."""
    prefix, env = runner_command("aarch64")
    command = [shutil.which(prefix[0]) or prefix[0], *prefix[1:]] if prefix else []
    return subprocess.run([*command, str(runner), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def run_and_compare(package_dir: Path, source, tmp: Path, use_default_package: bool) -> None:
    inputs = sample_inputs(source.inputs, seed=3)
    args = [] if use_default_package else [str(package_dir)]
    for spec, array in zip(source.inputs, inputs, strict=True):
        np.save(tmp / f"{spec.name}.npy", array)
        args += ["--input", f"{spec.name}={tmp / spec.name}.npy"]
    out = tmp / "out"
    out.mkdir()
    proc = run_arm(package_dir / "bin" / "deploytool-run", [*args, "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((package_dir / "manifest.json").read_text())
    expected = run_torchscript(source.module, inputs)
    for spec, reference in zip(manifest["outputs"], expected, strict=True):
        got = np.load(out / f"{spec['name']}.npy")
        assert got.shape == reference.shape
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)


# Targets and runners: need no toolchain.

@pytest.mark.parametrize("name", ARM_TARGETS)
def test_arm_targets(name):
    spec = load_target(name)
    assert (spec.arch, spec.cxx) == ("aarch64", CROSS_CXX)
    assert spec.target["mtriple"] == "aarch64-linux-gnu"
    features = spec.cpu_features()
    assert {"asimd", "fp"} <= set(features)
    assert not {"aes", "sha2", "crc32"} & set(features)  # a Raspberry Pi 4 has none of them
    assert not spec.runs_here() or platform.machine() == "aarch64"


def test_arm_cpu_features_follow_the_cores():
    # Cortex-A76 and A78AE (ARMv8.2) have dot product and fp16 arithmetic; the A72 (v8.0) does not.
    for name in ("raspberry-pi-5", "jetson-orin-cpu"):
        assert {"asimddp", "fphp", "asimdrdm"} <= set(load_target(name).cpu_features())
    assert not {"asimddp", "fphp"} & set(load_target("raspberry-pi-4").cpu_features())


def test_native_runner_needs_no_prefix():
    assert runner_command(platform.machine()) == ([], {})


@on_x86
def test_qemu_runner_for_aarch64(tmp_path, monkeypatch):
    monkeypatch.setattr(runners.shutil, "which", lambda name: f"/usr/bin/{name}")
    (tmp_path / "lib").mkdir()
    monkeypatch.setenv("QEMU_LD_PREFIX", str(tmp_path))
    assert runner_command("aarch64") == (["qemu-aarch64-static"], {"QEMU_LD_PREFIX": str(tmp_path)})
    monkeypatch.delenv("QEMU_LD_PREFIX")
    if Path("/usr/aarch64-linux-gnu/lib").is_dir():
        assert runner_command("aarch64")[1] == {"QEMU_LD_PREFIX": "/usr/aarch64-linux-gnu"}


@on_x86
def test_missing_qemu_says_what_to_install(monkeypatch):
    monkeypatch.setattr(runners.shutil, "which", lambda name: None)
    with pytest.raises(DeploytoolError, match=r"needs qemu-aarch64-static.*apt-get install "
                                              r"qemu-user-static"):
        runner_command("aarch64")
    assert not can_run("aarch64")


@on_x86
def test_missing_sysroot_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(runners.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setenv("QEMU_LD_PREFIX", str(tmp_path / "none"))
    with pytest.raises(DeploytoolError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        runner_command("aarch64")


def test_unknown_architecture_has_no_runner():
    with pytest.raises(DeploytoolError, match="cannot run riscv64 binaries"):
        runner_command("riscv64")
    assert not can_run("riscv64")


def test_missing_toolchain_is_reported_before_any_work(tmp_path):
    target = json.loads((Path(__file__).parent.parent / "targets" / "arm64.json").read_text())
    target["cxx"] = "aarch64-nonexistent-linux-gnu-g++"
    target_file = tmp_path / "no-toolchain.json"
    target_file.write_text(json.dumps(target))
    model = save_torchscript(*mlp(), tmp_path / "mlp.pt")
    result = CliRunner().invoke(main, ["compile", str(model), "--target", str(target_file),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert ("Error: the C++ compiler aarch64-nonexistent-linux-gnu-g++ is not installed. "
            "Install it (apt-get install g++-aarch64-linux-gnu)") in result.output
    assert "Traceback" not in result.output
    assert not re.search(r"^\s+load\s+[0-9.]+ s$", result.output, re.M)  # no stage ran
    assert not (tmp_path / "out").exists()


def test_runtime_dir_of_the_wrong_architecture_is_refused(tmp_path):
    if shutil.which(CROSS_CXX) is None:
        pytest.skip(f"needs {CROSS_CXX} (apt-get install g++-aarch64-linux-gnu)")
    import tvm

    host = "x86_64" if platform.machine() == "x86_64" else None
    site_packages = Path(tvm.__file__).parent.parent  # tvm/lib and tvm_ffi/lib: this machine's
    model = save_torchscript(*mlp(), tmp_path / "mlp.pt")
    result = CliRunner().invoke(main, ["compile", str(model), "--target", "arm64",
                                       "--runtime-dir", str(site_packages),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"libtvm_runtime.so is {host or platform.machine()} but the target needs aarch64" in \
        result.output
    assert not (tmp_path / "out").exists()


# End to end: cross-compile, check binaries, run under qemu.

@pytest.mark.slow
@pytest.mark.cross
def test_every_binary_is_aarch64(arm_packages):
    for package, _ in arm_packages.values():
        elves = {str(p.relative_to(package.path)): elf_arch(p)
                 for p in package.path.rglob("*") if p.is_file() and elf_arch(p)}
        assert set(BINARIES) <= set(elves)
        assert set(elves.values()) == {"aarch64"}, elves
        assert package.manifest["runtime"]["arch"] == "aarch64"
        assert "asimd" in package.manifest["runtime"]["cpu_features"]
        assert "qemu-aarch64-static bin/deploytool-run" in (package.path / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.cross
def test_runtime_comes_from_the_checked_cache(arm_packages):
    from deploytool.common import sha256_of
    from deploytool.toolchains.tvm_runtime import SOURCES, cache_dir

    record = json.loads((cache_dir("aarch64") / SOURCES).read_text())
    assert all(req.split("==")[0] in ("apache-tvm", "apache-tvm-ffi")
               for req in record["requirements"])
    package, _ = arm_packages["mlp"]
    for name in ("libtvm_runtime.so", "libtvm_ffi.so"):
        assert sha256_of(package.path / "lib" / name) == record["sha256"][name]


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_runs_under_qemu_like_torchscript(arm_packages, name, tmp_path):
    package, source = arm_packages[name]
    run_and_compare(package.path, source, tmp_path, use_default_package=False)


@pytest.mark.slow
@pytest.mark.cross
def test_moved_package_runs_again(arm_packages, tmp_path):
    package, source = arm_packages["mlp"]
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(package.path, moved, symlinks=True)
    hidden = package.path.with_name(package.path.name + ".hidden")
    os.rename(package.path, hidden)  # nothing may still point into the original folder
    try:
        run_and_compare(moved, source, tmp_path, use_default_package=True)
    finally:
        os.rename(hidden, package.path)


@pytest.mark.slow
@pytest.mark.cross
@on_x86
def test_arm_package_is_refused_by_the_x86_runner(arm_packages, tmp_path):
    from deploytool.toolchains.native import build_native

    build_native(load_target("x86_64-avx2"), tmp_path)  # an x86 runner and C API alone
    package, _ = arm_packages["mlp"]
    proc = subprocess.run([str(tmp_path / "bin" / "deploytool-run"), str(package.path)],
                          capture_output=True, text=True, env={}, timeout=60)
    assert proc.returncode == 1
    assert "the package was compiled for aarch64 but this machine is x86_64" in proc.stderr


@pytest.mark.slow
@pytest.mark.cross
def test_compile_with_runtime_dir(arm_packages, tmp_path):
    from deploytool.toolchains.tvm_runtime import cache_dir

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in ("libtvm_runtime.so", "libtvm_ffi.so"):
        shutil.copy2(cache_dir("aarch64") / name, runtime / name)
    _, source = arm_packages["mlp"]
    result = CliRunner().invoke(main, ["compile", str(source.path), "--target", "raspberry-pi-4",
                                       "--runtime-dir", str(runtime), "-o", str(tmp_path / "pi4")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "pi4" / "manifest.json").read_text())
    assert manifest["compile_options"]["runtime_dir"] == str(runtime)
    assert manifest["target"]["resolved_cpu"] == "cortex-a72"
    run_and_compare(tmp_path / "pi4", source, tmp_path, use_default_package=False)


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_compile_validates_under_emulation(arm_packages, name, tmp_path):
    """compile ran the aarch64 runner under qemu against ONNX Runtime and TorchScript."""
    package, _ = arm_packages[name]
    validation = package.manifest["validation"]
    assert validation["status"] == "passed"
    assert validation["references"] == ["onnxruntime", "torchscript", "float64"]
    prefix, env = runner_command("aarch64")
    proc = subprocess.run([*prefix, str(package.runner), "--self-test"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "self-test PASSED" in proc.stdout


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("model, shape", [
    (residual_conv, (128, 7)),  # 6x16 tiles, then the leftover pixel's own tile
    (residual_conv, (64, 14)),  # a row's 2 leftover pixels by two channel tiles (2x32)
    (depthwise, (16, 16)),  # 4-pixel tiles reading each tap in place
])
def test_narrow_register_tiles_validate_under_emulation(compile_package, tmp_path, model, shape):
    """NEON takes the narrow-register tiles test_schedules checks on AVX2."""
    needs_cross()
    path = save_torchscript(*model(*shape), tmp_path / "conv.pt")
    package = compile_package(path, "arm64", java=False)
    assert package.manifest["validation"]["status"] == "passed"
