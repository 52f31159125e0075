"""CUDA targets: compile without a GPU, check the kernels and the package; run where a GPU is."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import relax_module

from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.targets import load_target
from deploytool.testing.examples import cnn, mlp, save_torchscript
from deploytool.toolchains import cuda

HAS_GPU = cuda.gpu_present()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU here (nvidia-smi found none)")
needs_no_gpu = pytest.mark.skipif(HAS_GPU, reason="checks behaviour without a GPU; there is one")
try:
    cuda.find_nvcc()
    HAS_NVCC = True
except DeploytoolError:
    HAS_NVCC = False
needs_nvcc = pytest.mark.skipif(not HAS_NVCC, reason="nvcc (CUDA toolkit) is not installed")

EM_CUDA = 190  # ELF e_machine of NVIDIA GPU code (cubin)
MODELS = {"mlp": mlp, "cnn": cnn}


def cubin_archs(data: bytes) -> set[int]:
    """The SM versions of the GPU ELF images (cubins) embedded anywhere in ``data``."""
    found, pos = set(), data.find(b"\x7fELF")
    while pos >= 0:
        if len(data) >= pos + 0x34 and data[pos + 4] == 2:  # 64-bit ELF header
            machine = struct.unpack_from("<H", data, pos + 0x12)[0]
            if machine == EM_CUDA:
                flags = struct.unpack_from("<I", data, pos + 0x30)[0]
                found.add((flags >> 8) & 0xFF)  # the SM version in CUDA's ELF ABI v8 e_flags
        pos = data.find(b"\x7fELF", pos + 4)
    return found


# Packages compiled on another machine (benchmarks/gpu.py prepare), for a GPU machine without TVM.
PREBUILT = os.environ.get("DEPLOYTOOL_CUDA_PACKAGES")


@pytest.fixture(scope="module")
def packages(compile_package):
    """The folder of each (model, target)'s package, compiled on demand (or prebuilt); each
    package's parent folder holds the TorchScript it was compiled from, ``<model>.pt``."""

    def get(model: str, target: str) -> Path:
        if not PREBUILT:
            return compile_package(model, target).path
        folder = Path(PREBUILT) / f"{model}-{target}"
        if not (folder / "manifest.json").is_file():
            pytest.skip(f"{model}-{target} is not among the packages in {PREBUILT}")
        return folder

    return get


def clean_env(**extra: str) -> dict[str, str]:
    """No Python, no venv, no CUDA toolkit on the path: what a deployment machine may have."""
    return {"PATH": "/usr/bin:/bin", **extra}


# --- targets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,arch", [("cuda-sm80", "sm_80"), ("cuda-sm86", "sm_86"),
                                       ("cuda-sm89", "sm_89"), ("cuda-sm90", "sm_90")])
def test_named_cuda_targets_are_valid_tvm_targets(name, arch):
    spec = load_target(name)
    target = spec.tvm_target()
    assert (spec.device, spec.arch) == ("cuda", "x86_64")
    assert target.kind.name == "cuda" and str(target.attrs["arch"]) == arch
    assert target.host.kind.name == "llvm"
    assert "avx2" in spec.cpu_features()  # the host code is built for haswell


def test_jetson_orin_target_has_an_aarch64_host():
    spec = load_target("jetson-orin")
    target = spec.tvm_target()
    assert (spec.device, spec.arch, spec.cxx) == ("cuda", "aarch64", "aarch64-linux-gnu-g++")
    assert str(target.attrs["arch"]) == "sm_87"
    assert str(target.host.attrs["mtriple"]) == "aarch64-linux-gnu"


def test_cuda_target_without_a_gpu_asks_for_a_named_one(monkeypatch):
    monkeypatch.setattr(cuda.shutil, "which", lambda name: None)  # no nvidia-smi
    with pytest.raises(DeploytoolError, match="no NVIDIA GPU was found.*cuda-sm80"):
        load_target("cuda").resolved()


def test_cli_compile_for_cuda_without_a_gpu_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(cuda.shutil, "which", lambda name: None)
    module, inputs = mlp()
    model = save_torchscript(module, inputs, tmp_path / "mlp.pt")
    result = CliRunner().invoke(main, ["compile", str(model), "--target", "cuda",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "Error: target 'cuda' means this machine's GPU" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_missing_nvcc_is_a_clear_error_before_any_work(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(cuda, "DEFAULT_CUDA_HOME", tmp_path / "no-cuda")
    module, inputs = mlp()
    model = save_torchscript(module, inputs, tmp_path / "mlp.pt")
    result = CliRunner().invoke(main, ["compile", str(model), "--target", "cuda-sm80",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "Error: nvcc (the CUDA compiler) was not found" in result.output
    assert "  load " not in result.output  # failed before the first stage
    assert not (tmp_path / "out").exists()


@needs_nvcc
def test_jetson_orin_fails_clearly_for_now(tmp_path):
    module, inputs = mlp()
    model = save_torchscript(module, inputs, tmp_path / "mlp.pt")
    result = CliRunner().invoke(main, ["compile", str(model), "--target", "jetson-orin",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "Error: target 'jetson-orin' needs TVM's CUDA runtime built for aarch64" in result.output
    assert not (tmp_path / "out").exists()


# --- building (no GPU needed) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_relax(mlp_pt):
    return relax_module(mlp_pt)


def _gpu_kernels(module, shape, tmp_path, default_rules: bool) -> dict:
    """{kernel name: (blocks, threads per block)} of a model's convolutions, as scheduled for an
    sm_90 GPU by deploytool's rules or by DLight's defaults (TVM's own CUDA pipeline)."""
    import tvm
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    from deploytool.build import gpu_pipeline
    from deploytool.schedules import gpu as gpu_schedules
    from deploytool.tensors import TensorSpec

    mod = relax_module(save_torchscript(module, [TensorSpec("x", shape)], tmp_path / "model.pt"))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    passes = gpu_pipeline.legalize_passes(target)
    if default_rules:
        passes[-1] = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                             dl.gpu.GeneralReduction(), dl.gpu.Fallback())
    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    return {gv.name_hint: gpu_schedules.launch_shape(func) for gv, func in mod.functions.items()
            if isinstance(func, tirx.PrimFunc) and "conv2d" in gv.name_hint}


def test_depthwise_convolutions_get_a_thread_per_output(tmp_path):
    """DLight gave each output of a depthwise convolution a block of 256 threads sharing its 9
    terms (MobileNetV2: 2.54 ms on an H200, 0.48 ms with a thread per output)."""
    from torch import nn

    module = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32))
    outputs = 32 * 28 * 28
    (blocks, threads), = _gpu_kernels(module, (1, 32, 28, 28), tmp_path, False).values()
    assert outputs <= blocks * threads < outputs + threads  # one thread each, serial terms
    (blocks, threads), = _gpu_kernels(module, (1, 32, 28, 28), tmp_path, True).values()
    assert (blocks, threads) == (outputs, 256)  # DLight's: a block each


def test_long_reductions_with_few_outputs_are_split(tmp_path):
    """ResNet-18's last 3x3 convolutions (7x7 pixels, 512 channels: 4608 terms per output) had 16
    blocks for the H200's 132 multiprocessors with DLight's tile. Split into 8 parts, every part
    of every output is a thread, and the parts are added up in a second kernel."""
    from torch import nn

    from deploytool.schedules.gpu import MIN_BLOCKS

    module = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1, bias=False), nn.ReLU())
    (blocks, threads), = _gpu_kernels(module, (1, 512, 7, 7), tmp_path, False).values()
    assert blocks * threads == 8 * 512 * 7 * 7 and blocks >= MIN_BLOCKS
    (default_blocks, _), = _gpu_kernels(module, (1, 512, 7, 7), tmp_path, True).values()
    assert default_blocks == 16


def test_matmul_kernels_with_few_outputs_take_smaller_tiles(tmp_path):
    """Below the split's limits (MobileNetV2's 1x1 convolutions, which splitting made 10-20x
    slower; 28x28 3x3 convolutions), DLight's matmul takes smaller tiles until there are
    MIN_BLOCKS blocks, and keeps its own tile where that gives enough."""
    from torch import nn

    from deploytool.schedules.gpu import MIN_BLOCKS

    cases = [(nn.Conv2d(960, 160, 1, bias=False), (1, 960, 7, 7)),
             (nn.Conv2d(128, 128, 3, padding=1, bias=False), (1, 128, 28, 28))]
    for conv, shape in cases:
        (blocks, threads), = _gpu_kernels(nn.Sequential(conv), shape, tmp_path, False).values()
        (default, _), = _gpu_kernels(nn.Sequential(conv), shape, tmp_path, True).values()
        assert default < blocks and (blocks >= MIN_BLOCKS or threads == 64), (shape, blocks)
        assert threads * blocks < conv.out_channels * shape[2] * shape[3]  # tiles: not split
    wide = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1, bias=False))  # 196 blocks: kept
    assert (_gpu_kernels(wide, (1, 64, 56, 56), tmp_path, False)
            == _gpu_kernels(wide, (1, 64, 56, 56), tmp_path, True))


@pytest.mark.slow
@needs_nvcc
def test_without_the_gpu_pipeline_no_kernel_reaches_the_gpu(mlp_relax, monkeypatch, tmp_path):
    import tvm
    import tvm_ffi

    from deploytool.build import library as build

    before = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    monkeypatch.setitem(build.DEFAULT_PIPELINES, "cuda",
                        lambda target: tvm.relax.get_pipeline("default_build"))
    with pytest.raises(DeploytoolError, match="no kernel of the model on the GPU"):
        build.build_library(mlp_relax, load_target("cuda-sm80"), tmp_path / "model.so")
    after = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    assert (before is None) == (after is None)  # TVM's callback put back


@pytest.mark.slow
@needs_nvcc
def test_nvcc_failure_is_one_clear_line(mlp_relax, monkeypatch, tmp_path):
    from deploytool.build import library as build

    real = cuda.nvcc_command
    monkeypatch.setattr(cuda, "nvcc_command",
                        lambda *args: [*real(*args)[:-1], "--no-such-flag", real(*args)[-1]])
    with pytest.raises(DeploytoolError) as raised:
        build.build_library(mlp_relax, load_target("cuda-sm80"), tmp_path / "model.so")
    assert str(raised.value).startswith("nvcc failed to compile the kernels for sm_80 (")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "model.so").exists()


@pytest.mark.slow
@needs_nvcc
def test_dump_ir_writes_the_cuda_source_and_the_gpu_kernels(mlp_relax, tmp_path):
    from deploytool.build.library import build_library

    dump = tmp_path / "ir"
    build_library(mlp_relax, load_target("cuda-sm80"), tmp_path / "model.so", dump=dump)
    assert "__global__" in (dump / "model.cu").read_text()
    kernels = [p.read_text() for p in (dump / "tir").glob("*.py")]
    assert kernels and all("threadIdx.x" in k for k in kernels)  # each kernel on GPU threads
    assert "vm.builtin" in (dump / "relax-final.py").read_text()
    assert (dump / "model.s").is_file()  # the host code


# --- compiled packages (no GPU needed) -----------------------------------------------------------

@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("target,sm", [("cuda-sm80", 80), ("cuda-sm90", 90)])
def test_package_carries_kernels_for_the_named_arch(packages, model, target, sm):
    package = packages(model, target)
    data = (package / "model.so").read_bytes()
    assert cubin_archs(data) == {sm}, "SASS for exactly the target's GPU"
    assert f".target sm_{sm}".encode() in data, "PTX for newer GPUs"
    other = 90 if sm == 80 else 80
    assert f".target sm_{other}".encode() not in data
    assert b"__global__" not in data, "kernels compiled, not left as CUDA source"


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("target", ["cuda-sm80", "cuda-sm90"])
def test_package_contents_and_manifest(packages, target):
    package = packages("mlp", target)
    for name in ("model.so", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "lib/libdeploytool.so",
                 "lib/libtvm_runtime_cuda.so", "include/deploytool.h",
                 "include/deploytool_dlpack.h", "include/dlpack/dlpack.h", "bin/deploytool-run"):
        assert (package / name).is_file(), name
    assert list((package / "lib").glob("libcudart.so.*")), "the CUDA runtime travels along"
    manifest = json.loads((package / "manifest.json").read_text())
    runtime = manifest["runtime"]
    assert runtime["device"] == "cuda"
    assert runtime["cuda"]["arch"] == target.replace("cuda-sm", "sm_")
    assert runtime["cuda"]["min_driver"] and runtime["cuda"]["nvcc"]
    readme = (package / "README.md").read_text()
    assert "--device cuda:0" in readme and runtime["cuda"]["min_driver"] in readme


@pytest.mark.slow
@needs_nvcc
def test_runtime_libraries_resolve_inside_the_package(packages):
    package = packages("mlp", "cuda-sm80")
    proc = subprocess.run(["ldd", str(package / "lib" / "libtvm_runtime_cuda.so")],
                          capture_output=True, text=True, env=clean_env())
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if "=>" in line}
    for name in ("libtvm_runtime.so", "libtvm_ffi.so"):
        assert str(package / "lib") in lines[name], lines[name]
    cudart = next(name for name in lines if name.startswith("libcudart"))
    assert str(package / "lib") in lines[cudart]


# --- loading without a GPU: clear errors, no crash -----------------------------------------------

@pytest.mark.slow
@needs_nvcc
@needs_no_gpu
def test_runner_without_gpu_gives_a_clear_error(packages):
    package = packages("mlp", "cuda-sm80")
    proc = subprocess.run([str(package / "bin" / "deploytool-run")], capture_output=True,
                          text=True, env=clean_env())
    assert proc.returncode == 1, proc.stderr  # an error exit, not a signal
    assert ("the NVIDIA driver (libcuda.so.1) is not installed" in proc.stderr  # no driver
            or "no CUDA GPU cuda:0 on this machine" in proc.stderr)  # a driver but no GPU


@pytest.mark.slow
@needs_nvcc
@needs_no_gpu
def test_driver_without_gpu_gives_a_clear_error(packages):
    package = packages("mlp", "cuda-sm80")
    stub = cuda._driver_stub(cuda.find_nvcc())  # a libcuda.so.1 that reports no device
    proc = subprocess.run([str(package / "bin" / "deploytool-run"), "--device", "cuda:0"],
                          capture_output=True, text=True,
                          env=clean_env(LD_LIBRARY_PATH=str(stub.parent)))
    assert proc.returncode == 1
    assert "no CUDA GPU cuda:0 on this machine" in proc.stderr


@pytest.mark.slow
@needs_nvcc
def test_device_mismatch_and_unknown_device(packages):
    runner = packages("mlp", "cuda-sm80") / "bin" / "deploytool-run"
    proc = subprocess.run([str(runner), "--device", "cpu"], capture_output=True, text=True,
                          env=clean_env())
    assert proc.returncode == 1
    assert "compiled for cuda, not for device 'cpu'" in proc.stderr
    proc = subprocess.run([str(runner), "--device", "tpu:0"], capture_output=True, text=True,
                          env=clean_env())
    assert proc.returncode == 1 and "unknown device 'tpu:0'" in proc.stderr


C_PROGRAM = r"""
#include <stdio.h>
#include "deploytool_dlpack.h"

int main(int argc, char** argv) {
  dt_model* model = NULL;
  int code = dt_load(argv[1], argc > 2 ? argv[2] : NULL, &model);
  printf("code=%d\n%s\n", code, dt_last_error());
  if (code == DT_OK) {
    DLDevice device;
    dt_device(model, &device);
    printf("device=%d:%d\n", (int)device.device_type, device.device_id);
    dt_free(model);
  }
  return 0;
}
"""


@pytest.mark.slow
@needs_nvcc
def test_c_api_header_compiles_as_c_and_load_fails_cleanly(packages, tmp_path):
    package = packages("mlp", "cuda-sm80")
    (tmp_path / "main.c").write_text(C_PROGRAM)
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", str(tmp_path / "main.c"),
                    f"-I{package / 'include'}", f"-L{package / 'lib'}", "-ldeploytool",
                    f"-Wl,-rpath,{package / 'lib'}", "-o", str(tmp_path / "main")], check=True)
    proc = subprocess.run([str(tmp_path / "main"), str(package)], capture_output=True, text=True,
                          env=clean_env())
    assert proc.returncode == 0
    if HAS_GPU:
        assert "code=0" in proc.stdout and "device=2:0" in proc.stdout  # kDLCUDA
    else:
        assert "code=6" in proc.stdout  # DT_ERR_DEVICE
        assert "NVIDIA" in proc.stdout


CPU_DLPACK_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "deploytool_dlpack.h"

int main(int argc, char** argv) {
  dt_model* model;
  if (dt_load(argv[1], NULL, &model)) { printf("load: %s\n", dt_last_error()); return 1; }
  dt_tensor_info in, out;
  dt_input_info(model, 0, &in);
  dt_output_info(model, 0, &out);
  float* block = aligned_alloc(64, in.nbytes + 64);
  float* x = block + 1; /* not 64-byte aligned: the model copies it */
  for (size_t i = 0; i < in.nbytes / 4; ++i) x[i] = (float)((i % 17) / 8.0 - 1.0);
  float* y = malloc(out.nbytes);
  const void* inputs[1] = {x};
  void* outputs[1] = {y};
  if (dt_run(model, inputs, outputs)) { printf("run: %s\n", dt_last_error()); return 1; }
  DLTensor tensor = {block, {kDLCPU, 0}, in.ndim, {kDLFloat, 32, 1}, in.shape, NULL, 4};
  const DLTensor* dl_inputs[1] = {&tensor};
  DLManagedTensorVersioned* result[1] = {NULL};
  if (dt_run_dlpack(model, dl_inputs, result)) {
    printf("dlpack: %s\n", dt_last_error());
    return 1;
  }
  const DLTensor* r = &result[0]->dl_tensor;
  int same = r->device.device_type == kDLCPU && r->ndim == out.ndim &&
             memcmp(r->shape, out.shape, sizeof(int64_t) * out.ndim) == 0 &&
             memcmp((char*)r->data + r->byte_offset, y, out.nbytes) == 0;
  printf("same=%d\n", same);
  result[0]->deleter(result[0]);
  int64_t wrong_shape[8] = {2, 512};
  tensor.shape = wrong_shape;
  int code = dt_run_dlpack(model, dl_inputs, result);
  printf("wrong shape: %d %s\n", code, dt_last_error());
  tensor.shape = in.shape;
  tensor.device.device_type = kDLCUDA;
  code = dt_run_dlpack(model, dl_inputs, result);
  printf("wrong device: %d %s\n", code, dt_last_error());
  dt_free(model);
  free(block);
  free(y);
  return 0;
}
"""


@pytest.mark.slow
def test_dlpack_entry_point_on_a_cpu_package(compile_package, tmp_path):
    """dt_run_dlpack is device-generic: on a CPU package it runs here, and must match dt_run."""
    package = compile_package("mlp", "x86_64-avx2").path
    (tmp_path / "main.c").write_text(CPU_DLPACK_PROGRAM)
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", str(tmp_path / "main.c"),
                    f"-I{package / 'include'}", f"-L{package / 'lib'}", "-ldeploytool",
                    f"-Wl,-rpath,{package / 'lib'}", "-o", str(tmp_path / "main")], check=True)
    proc = subprocess.run([str(tmp_path / "main"), str(package)], capture_output=True, text=True,
                          env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "same=1" in proc.stdout
    assert "wrong shape: 1 dt_run_dlpack: input 'x' does not have the dtype and shape" \
        in proc.stdout
    assert "wrong device: 1 dt_run_dlpack: input 'x' is on another device" in proc.stdout


# --- on a GPU ------------------------------------------------------------------------------------

DLPACK_PROGRAM = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "deploytool_dlpack.h"

/* the CUDA runtime the package ships (lib/libcudart.so.*), declared here to need no toolkit */
int cudaMalloc(void** p, size_t n);
int cudaMemcpy(void* dst, const void* src, size_t n, int kind);
int cudaFree(void* p);

int main(int argc, char** argv) {
  dt_model* model;
  if (dt_load(argv[1], "cuda:0", &model)) { fprintf(stderr, "%s\n", dt_last_error()); return 1; }
  dt_tensor_info in, out;
  dt_input_info(model, 0, &in);
  dt_output_info(model, 0, &out);
  float* x = malloc(in.nbytes);
  float* y_host = malloc(out.nbytes);
  float* y_dlpack = malloc(out.nbytes);
  for (size_t i = 0; i < in.nbytes / 4; ++i) x[i] = (float)((i % 17) / 8.0 - 1.0);
  const void* inputs[1] = {x};
  void* outputs[1] = {y_host};
  if (dt_run(model, inputs, outputs)) { fprintf(stderr, "%s\n", dt_last_error()); return 1; }
  void* x_gpu;
  cudaMalloc(&x_gpu, in.nbytes);
  cudaMemcpy(x_gpu, x, in.nbytes, 1);
  DLTensor tensor = {x_gpu, {kDLCUDA, 0}, in.ndim, {kDLFloat, 32, 1}, in.shape, NULL, 0};
  const DLTensor* dl_inputs[1] = {&tensor};
  DLManagedTensorVersioned* result[1];
  if (dt_run_dlpack(model, dl_inputs, result)) {
    fprintf(stderr, "%s\n", dt_last_error());
    return 1;
  }
  if (result[0]->dl_tensor.device.device_type != kDLCUDA) return 3;
  cudaMemcpy(y_dlpack, result[0]->dl_tensor.data, out.nbytes, 2);
  result[0]->deleter(result[0]);
  for (size_t i = 0; i < out.nbytes / 4; ++i) {
    if (fabsf(y_host[i] - y_dlpack[i]) > 1e-6f) return 4;
    printf("%.8g\n", y_host[i]);
  }
  cudaFree(x_gpu);
  dt_free(model);
  return 0;
}
"""


@pytest.mark.slow
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_gpu_package_matches_pytorch(packages, model, tmp_path):
    import torch

    package = packages(model, "cuda")
    module = torch.jit.load(str(package.parent / f"{model}.pt"))
    inputs = MODELS[model]()[1]
    torch.manual_seed(1)
    x = torch.rand(*inputs[0].shape) * 2 - 1
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run([str(package / "bin" / "deploytool-run"), "--device", "cuda:0",
                           "--input", f"{inputs[0].name}={tmp_path / 'x.npy'}",
                           "--output-dir", str(tmp_path), "--repeat", "20"],
                          capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((package / "manifest.json").read_text())
    got = np.load(tmp_path / f"{manifest['outputs'][0]['name']}.npy")
    with torch.no_grad():
        want = module.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("target", ["cuda", "cuda-sm80"])
def test_gpu_self_test_passes(packages, target):
    """The package's own test vectors (computed at compile time) on the GPU, no Python."""
    package = packages("cnn", target)
    proc = subprocess.run([str(package / "bin" / "deploytool-run"), "--self-test"],
                          capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test PASSED" in proc.stdout


@pytest.mark.slow
@needs_nvcc
@needs_no_gpu
def test_compile_without_gpu_leaves_validation_pending(packages):
    manifest = json.loads((packages("mlp", "cuda-sm80") / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "pending"
    assert manifest["self_test"], "test vectors for the GPU machine's --self-test"


@pytest.mark.slow
@pytest.mark.gpu
@needs_gpu
def test_gpu_dlpack_keeps_data_on_the_device(packages, tmp_path):
    package = packages("mlp", "cuda")
    (tmp_path / "main.c").write_text(DLPACK_PROGRAM)
    cudart = next((package / "lib").glob("libcudart.so.*")).name
    subprocess.run(["gcc", "-std=c99", str(tmp_path / "main.c"), f"-I{package / 'include'}",
                    f"-L{package / 'lib'}", "-ldeploytool", f"-l:{cudart}", "-lm",
                    f"-Wl,-rpath,{package / 'lib'}", "-o", str(tmp_path / "main")], check=True)
    proc = subprocess.run([str(tmp_path / "main"), str(package)], capture_output=True, text=True,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 2  # the MLP's two outputs, equal by both paths


# --- bench on a GPU --------------------------------------------------------------------------

@pytest.mark.slow
@needs_nvcc
@needs_no_gpu
def test_bench_of_a_gpu_package_without_a_gpu_is_one_line(packages):
    outcome = CliRunner().invoke(main, ["bench", str(packages("mlp", "cuda-sm80"))])
    assert outcome.exit_code == 1
    assert outcome.output.strip().splitlines()[-1].startswith("Error: no NVIDIA GPU cuda:0")
    assert "Traceback" not in outcome.output


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("device, message", [("cpu", "runs on cuda, not on cpu"),
                                             ("gpu0", "--device gpu0 is not a device")])
def test_bench_device_must_suit_the_package(packages, device, message):
    outcome = CliRunner().invoke(main, ["bench", str(packages("mlp", "cuda-sm80")),
                                        "--device", device])
    assert outcome.exit_code == 2 and message in outcome.output
    assert "Traceback" not in outcome.output


def test_bench_worker_without_a_gpu_build_of_torch_says_so(tmp_path):
    """PyTorch eager on the GPU needs a CUDA build of torch; without one, a one-line reason."""
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch can use a GPU")
    module, inputs = mlp()
    model = save_torchscript(module, inputs, tmp_path / "mlp.pt")
    np.save(tmp_path / "x.npy", np.zeros(inputs[0].shape, np.float32))
    from deploytool.bench.timing import WORKER

    proc = subprocess.run([sys.executable, "-m", WORKER, "torchscript", "--model", str(model),
                           "--device", "cuda:0", "--threads", "1", "--input",
                           f"{inputs[0].name}={tmp_path / 'x.npy'}", "--json",
                           str(tmp_path / "r.json")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"this PyTorch cannot use cuda:0 (torch {torch.__version__} "
                                   "has no CUDA, or sees no GPU): install a CUDA build of PyTorch")


@pytest.mark.slow
@pytest.mark.gpu
@needs_gpu
def test_gpu_bench_beside_pytorch_on_the_same_gpu(packages, tmp_path):
    from deploytool.bench.timing import BenchOptions, bench_package

    package = packages("cnn", "cuda")
    result = bench_package(BenchOptions(package=package, model=package.parent / "cnn.pt",
                                        compare=("torchscript",), min_iters=20, min_seconds=0.5,
                                        rounds=2, save=False, json=tmp_path / "r.json"))
    assert result.machine["device"] == "cuda:0"
    assert result.machine["gpu"]["arch"] == cuda.detect_gpu_arch()
    assert result.get("torchscript").max_abs_diff < 1e-4  # the same inputs, the same answer
    report = json.loads((tmp_path / "r.json").read_text())
    assert all(r["device"] == "cuda:0" for r in report["backends"]["torchscript"]["rounds"])
    assert result.get("package").stats.iterations >= 20
