"""Build a Relax module for a target into a shared library."""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

from .errors import DeploytoolError
from .lowering import tir_pipeline
from .targets import TargetSpec


def check_compiler(cxx: str) -> None:
    """Raise a clear error when the C++ compiler a target needs is not installed."""
    if shutil.which(cxx) is None:
        package = "g++-aarch64-linux-gnu" if "aarch64" in cxx else "g++"
        raise DeploytoolError(f"the C++ compiler {cxx} is not installed",
                              f"Install it (apt-get install {package})")


def build_library(mod, target: TargetSpec, path: Path, pipeline=None) -> None:
    """Compile ``mod`` for ``target`` and write it to ``path`` (a .so with the weights inside).

    Parameters
    ----------
    mod : tvm.IRModule
        The Relax module.
    target : TargetSpec
        A resolved target.
    path : Path
        The shared library to write.
    pipeline : tvm.transform.Pass, optional
        The Relax pipeline (tuning.build_pipeline for CPU targets); None means TVM's default.
    """
    import tvm
    from tvm.support import cc

    check_compiler(target.cxx)
    tvm_target = target.tvm_target()
    kind = target.target.get("kind")
    if pipeline is None:
        pipeline = (DEFAULT_PIPELINES[kind](tvm_target) if kind in DEFAULT_PIPELINES
                    else "default")
    lowering = tir_pipeline() if kind == "llvm" else "default"
    with _device_toolchain(target):
        try:
            executable = tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline,
                                     tir_pipeline=lowering)
        except Exception as err:
            lines = str(err).strip().splitlines()
            raise DeploytoolError(f"TVM could not build the model for {target.name} "
                                  f"({lines[-1] if lines else err})",
                                  "Report it with the model attached") from err
    fcompile = cc.cross_compiler(target.cxx) if target.cxx != "g++" else None
    executable.export_library(str(path), fcompile=fcompile)


def _gpu_pipeline(tvm_target):
    """TVM's CUDA pipeline (legalize, fuse, schedule, lower) with gpu_schedules' DLight rules,
    so that every kernel has thread bindings untuned."""
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda

    from .gpu_schedules import legalize_passes

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        with tvm_target:
            return tvm.transform.Sequential(
                cuda.library_dispatch_passes(tvm_target) + legalize_passes(tvm_target)
                + cuda.dataflow_lower_passes(tvm_target) + cuda.finalize_passes(tvm_target))(mod)

    return pipeline


# target kind -> the Relax pipeline an untuned build uses (others: TVM's "default")
DEFAULT_PIPELINES = {"cuda": _gpu_pipeline}


def _device_toolchain(target: TargetSpec):
    """nvcc for CUDA kernels while building a GPU target; nothing for a CPU target."""
    if target.target.get("kind") == "cuda":
        from .cuda import kernel_compiler

        return kernel_compiler(target)
    return nullcontext()
