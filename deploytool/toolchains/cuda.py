"""CUDA targets: the GPU toolchain (nvcc), kernel compilation and the runtime a package carries."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..common import cache_root
from ..errors import DeploytoolError

if TYPE_CHECKING:
    from ..targets import TargetSpec

# The NVIDIA driver a CUDA major.minor release needs at least (CUDA release notes, Linux x86_64).
MIN_DRIVER = {"12.0": "525.60.13", "13.0": "580.65.06"}
DEFAULT_CUDA_HOME = Path("/usr/local/cuda")
NAMED_TARGETS = ("cuda-sm80 (A100), cuda-sm86 (A10, RTX 30), cuda-sm89 (L4, RTX 40), "
                 "cuda-sm90 (H100, H200)")

# The entry points of the NVIDIA driver (libcuda.so.1) that libtvm_runtime_cuda.so imports.
# Where the driver is missing, a stand-in exporting these (each answering "no device") lets
# that library load, so that TVM compiles kernels to binaries at build time.
_DRIVER_STUB = r"""
#define CUDA_ERROR_NO_DEVICE 100
int cuDeviceGetName(void) { return CUDA_ERROR_NO_DEVICE; }
int cuFuncSetAttribute(void) { return CUDA_ERROR_NO_DEVICE; }
int cuGetErrorName(int e, const char** s) { if (s) *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
int cuGetErrorString(int e, const char** s) { if (s) *s = "no NVIDIA driver"; return 0; }
int cuLaunchKernel(void) { return CUDA_ERROR_NO_DEVICE; }
int cuLaunchKernelEx(void) { return CUDA_ERROR_NO_DEVICE; }
int cuLaunchCooperativeKernel(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleGetFunction(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleGetGlobal(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleLoadData(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleUnload(void) { return CUDA_ERROR_NO_DEVICE; }
int cuTensorMapEncodeTiled(void) { return CUDA_ERROR_NO_DEVICE; }
"""
_LOADED: dict[str, ctypes.CDLL] = {}  # libraries loaded into this process, kept alive


def is_cuda(target: TargetSpec) -> bool:
    """Whether ``target`` compiles kernels for an NVIDIA GPU."""
    return target.target.get("kind") == "cuda"


def find_nvcc() -> Path:
    """The CUDA compiler: ``$CUDA_HOME/bin/nvcc``, ``nvcc`` on PATH, or /usr/local/cuda's.

    Returns
    -------
    Path
        The nvcc executable.
    """
    candidates = [Path(os.environ[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH")
                  if os.environ.get(v)]
    on_path = shutil.which("nvcc")
    candidates += [Path(on_path)] if on_path else []
    candidates.append(DEFAULT_CUDA_HOME / "bin" / "nvcc")
    for nvcc in candidates:
        if nvcc.is_file() and os.access(nvcc, os.X_OK):
            return nvcc
    raise DeploytoolError("nvcc (the CUDA compiler) was not found in $CUDA_HOME/bin, on PATH or "
                          f"in {DEFAULT_CUDA_HOME / 'bin'}",
                          "Install the CUDA toolkit, or set CUDA_HOME to its folder")


def nvcc_version(nvcc: Path) -> str:
    """The CUDA release of ``nvcc`` as ``"major.minor"``."""
    proc = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True)
    found = re.search(r"release (\d+\.\d+)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise DeploytoolError(f"{nvcc} --version failed ({(proc.stderr or proc.stdout).strip()})",
                              "Check the CUDA toolkit installation")
    return found.group(1)


def detect_gpu_arch() -> str:
    """The architecture (``"sm_90"``) of this machine's first NVIDIA GPU, from nvidia-smi."""
    try:
        return gpu_info(0)["arch"]
    except DeploytoolError:
        smi = shutil.which("nvidia-smi")
        raise DeploytoolError("target 'cuda' means this machine's GPU, but no NVIDIA GPU was "
                              "found (nvidia-smi " + ("found no GPU" if smi else
                                                      "is not installed") + ")",
                              f"Name the GPU's architecture instead: {NAMED_TARGETS}") from None


def gpu_info(index: int = 0) -> dict[str, str]:
    """Name, architecture (``"sm_90"``) and driver of GPU ``index``, from nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, f"--id={index}", "--format=csv,noheader",
                               "--query-gpu=name,compute_cap,driver_version"],
                              capture_output=True, text=True)
        fields = [f.strip() for f in proc.stdout.strip().split(",")]
        found = re.fullmatch(r"(\d+)\.(\d+)", fields[1]) if len(fields) == 3 else None
        if proc.returncode == 0 and found:
            return {"name": fields[0], "arch": f"sm_{found.group(1)}{found.group(2)}",
                    "driver": fields[2]}
    raise DeploytoolError(f"no NVIDIA GPU cuda:{index} on this machine (nvidia-smi "
                          + ("found none" if smi else "is not installed") + ")",
                          "Run it on the machine with the GPU, or name another one (cuda:N)")


def gpu_present() -> bool:
    """Whether nvidia-smi sees an NVIDIA GPU on this machine."""
    try:
        detect_gpu_arch()
    except DeploytoolError:
        return False
    return True


def sm_number(arch: str) -> str:
    """``"sm_80"`` -> ``"80"``; raises for anything else."""
    found = re.fullmatch(r"sm_(\d+)", str(arch))
    if not found:
        raise DeploytoolError(f"CUDA architecture '{arch}' is not of the form sm_XY",
                              'Write e.g. "arch": "sm_80" in the target')
    return found.group(1)


def _tvm_lib_dir() -> Path:
    import tvm

    return Path(tvm.__file__).parent / "lib"


def runtime_cuda_library() -> Path:
    """TVM's CUDA runtime plug-in, ``libtvm_runtime_cuda.so``, from the installed wheel."""
    path = _tvm_lib_dir() / "libtvm_runtime_cuda.so"
    if not path.is_file():
        raise DeploytoolError(f"the installed TVM has no CUDA runtime ({path} is missing)",
                              "Install an apache-tvm wheel built with CUDA")
    return path


def cudart_soname(runtime_cuda: Path | None = None) -> str:
    """The CUDA runtime libtvm_runtime_cuda.so links, e.g. ``libcudart.so.13``."""
    data = (runtime_cuda or runtime_cuda_library()).read_bytes()
    found = re.search(rb"libcudart\.so\.(\d+)", data)
    if not found:
        raise DeploytoolError("cannot tell which CUDA runtime libtvm_runtime_cuda.so needs",
                              "Reinstall the apache-tvm wheel")
    return found.group(0).decode()


def find_cudart(soname: str, nvcc: Path | None = None) -> Path:
    """The file of ``soname`` (``libcudart.so.13``): beside nvcc's toolkit, or in pip's CUDA."""
    folders = []
    if nvcc is not None:
        root = nvcc.resolve().parent.parent
        folders += [root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib"]
    try:
        import nvidia.cuda_runtime as pip_cudart  # the nvidia-cuda-runtime wheel, if installed

        folders += [Path(p) / "lib" for p in pip_cudart.__path__]
    except ImportError:
        pass
    folders += [DEFAULT_CUDA_HOME / "lib64", Path("/usr/lib/x86_64-linux-gnu")]
    for folder in folders:
        if (folder / soname).is_file():
            return (folder / soname).resolve()
    major = soname.rsplit(".", 1)[-1]
    raise DeploytoolError(f"the CUDA runtime {soname}, which TVM's CUDA runtime needs, was not "
                          "found", f"Install the CUDA {major} toolkit or set CUDA_HOME to it")


def check_toolchain(target: TargetSpec) -> Path:
    """Fail early, before any heavy work, when ``target``'s GPU toolchain or runtime is missing.

    Returns
    -------
    Path
        nvcc.
    """
    sm_number(target.target.get("arch", ""))
    if target.arch != "x86_64":
        raise DeploytoolError(
            f"target '{target.name}' needs TVM's CUDA runtime built for {target.arch} (against the "
            "board's CUDA, e.g. JetPack), which deploytool does not provide yet",
            f"Compile for a GPU in an x86_64 machine ({NAMED_TARGETS}), or for the board's CPU "
            "(jetson-orin-cpu)")
    nvcc = find_nvcc()
    find_cudart(cudart_soname(), nvcc)
    return nvcc


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _driver_stub(nvcc: Path) -> Path:
    """Build (once, cached) the stand-in libcuda.so.1 of :data:`_DRIVER_STUB`."""

    stub = cache_root() / "cuda-driver-stub" / "libcuda.so.1"
    if not stub.is_file():
        stub.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=stub.parent) as scratch:
            source = Path(scratch) / "stub.c"
            source.write_text(_DRIVER_STUB)
            built = Path(scratch) / "libcuda.so.1"
            proc = subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1",
                                   "-o", str(built), str(source)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise DeploytoolError(f"gcc failed to build a stand-in CUDA driver library: "
                                      f"{proc.stderr.strip()[-500:]}", "Install gcc")
            os.replace(built, stub)
    return stub


def enable_cuda_codegen(nvcc: Path) -> None:
    """Load TVM's CUDA runtime into this process so that TVM compiles kernels when building.

    Without it (on a machine with no NVIDIA driver, where ``import tvm`` skips the CUDA runtime)
    TVM 0.27 stores the kernels as CUDA source to be compiled by Python when loaded, which a
    Python-free package cannot do. Where the driver is missing, a stand-in ``libcuda.so.1`` whose
    functions all answer "no device" is loaded first; no kernel ever runs in this process.
    """
    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    runtime_cuda = runtime_cuda_library()
    try:
        if not _driver_present():
            _LOADED["driver-stub"] = ctypes.CDLL(str(_driver_stub(nvcc)), mode=ctypes.RTLD_GLOBAL)
        cudart = find_cudart(cudart_soname(runtime_cuda), nvcc)
        _LOADED["cudart"] = ctypes.CDLL(str(cudart), mode=ctypes.RTLD_GLOBAL)
        _LOADED["runtime-cuda"] = ctypes.CDLL(str(runtime_cuda), mode=ctypes.RTLD_LOCAL)
    except OSError as err:
        raise DeploytoolError(f"cannot load TVM's CUDA runtime ({err})",
                              "Check the CUDA toolkit and the apache-tvm installation") from err
    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        raise DeploytoolError("TVM's CUDA runtime loaded but registered no CUDA module factory",
                              "Reinstall apache-tvm")


def nvcc_command(nvcc: Path, arch: str, source: Path, output: Path) -> list[str]:
    """The nvcc command that compiles generated kernels into a fatbin.

    The fatbin holds SASS for ``arch`` (``sm_80``) and its PTX (``compute_80``, uncompressed),
    which the driver compiles for newer GPUs. The flags are those TVM's own nvcc path uses.
    """
    sm = sm_number(arch)
    command = [str(nvcc), "--fatbin", "-O3", "-gencode", f"arch=compute_{sm},code=[sm_{sm},"
               f"compute_{sm}]", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
               "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]
    if tuple(map(int, nvcc_version(nvcc).split("."))) >= (12, 8):
        command.append("--compress-mode=none")  # plain PTX: readable by tools and tests
    return command + ["-o", str(output), str(source)]


@contextmanager
def kernel_compiler(target: TargetSpec) -> Iterator[None]:
    """Within the block, TVM compiles ``target``'s CUDA kernels with nvcc into fatbins.

    Replaces TVM's ``tvm_callback_cuda_compile`` (which needs a GPU or the cuda-bindings package
    to know the architecture) and restores it on exit.
    """
    import tvm_ffi

    nvcc = check_toolchain(target)
    enable_cuda_codegen(nvcc)
    arch = target.target["arch"]
    errors: list[str] = []
    compiled: list[int] = []

    def compile_kernels(code: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="deploytool-nvcc-") as scratch:
            source, output = Path(scratch) / "kernels.cu", Path(scratch) / "kernels.fatbin"
            source.write_text(code)
            proc = subprocess.run(nvcc_command(nvcc, arch, source, output), capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no message"]
                errors.append(next((ln for ln in lines if "error" in ln), lines[-1]).strip())
                raise RuntimeError("nvcc failed")
            compiled.append(output.stat().st_size)
            return bytearray(output.read_bytes())

    name = "tvm_callback_cuda_compile"
    previous = tvm_ffi.get_global_func(name, allow_missing=True)
    tvm_ffi.register_global_func(name, compile_kernels, override=True)
    try:
        yield
    except Exception as err:
        if errors:
            raise DeploytoolError(f"nvcc failed to compile the kernels for {arch} ({errors[-1]})",
                                  "Check the CUDA toolkit, or report it with the model") from err
        raise
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(name, previous, override=True)
    if not compiled:  # every operator went to the host CPU: a "GPU" package that is not one
        raise DeploytoolError(f"TVM put no kernel of the model on the GPU ({arch})",
                              "Build with a pipeline that schedules GPU kernels (DLight)")


def runtime_libraries(target: TargetSpec) -> list[Path]:
    """The libraries a package for ``target`` carries beside TVM's own (none for CPU targets)."""
    if not is_cuda(target):
        return []
    nvcc = check_toolchain(target)
    runtime_cuda = runtime_cuda_library()
    return [runtime_cuda, find_cudart(cudart_soname(runtime_cuda), nvcc)]


def runtime_manifest(target: TargetSpec) -> dict:
    """What the manifest's ``runtime`` says about the device: ``{"device": "cpu"}`` or CUDA's."""
    if not is_cuda(target):
        return {"device": "cpu"}
    nvcc = find_nvcc()
    toolkit = nvcc_version(nvcc)
    cudart = cudart_soname()
    major = cudart.rsplit(".", 1)[-1]
    driver = MIN_DRIVER.get(toolkit) or MIN_DRIVER.get(f"{major}.0")
    arch = target.target["arch"]
    sm = sm_number(arch)
    return {
        "device": "cuda",
        "cuda": {
            "arch": arch,
            "kernels": [f"sm_{sm} (SASS)", f"compute_{sm} (PTX)"],
            "min_compute_capability": f"{sm[:-1]}.{sm[-1]}",
            "nvcc": toolkit,
            "cuda_runtime": f"{cudart} (CUDA {major}, shipped in lib/)",
            "min_driver": driver or f"a driver for CUDA {toolkit}",
            "needs": (f"an NVIDIA GPU of compute capability {sm[:-1]}.{sm[-1]} or newer and the "
                      f"NVIDIA driver (libcuda.so.1) >= {driver or 'CUDA ' + toolkit}"),
        },
    }
