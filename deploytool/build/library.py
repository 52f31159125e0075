"""Build a Relax module for a target into a shared library."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from ..common import last_line
from ..errors import DeploytoolError
from ..targets import TargetSpec
from ..toolchains.native import check_compiler
from .dump import dump_code, dumping_pipeline
from .gpu_pipeline import gpu_pipeline
from .lowering import codegen_target, tir_pipeline


def build_library(mod, target: TargetSpec, path: Path, pipeline=None,
                  dump: Path | None = None) -> None:
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
        The Relax pipeline (cpu_pipeline.build_pipeline for CPU targets); None means TVM's
        default.
    dump : Path, optional
        A folder to write the module after the pipeline, its kernels and the generated code into
        (see :mod:`.dump`); None writes none.
    """
    from tvm.support import cc

    check_compiler(target.cxx)
    executable = compile_executable(mod, target, pipeline, dump)
    if dump is not None:
        dump_code(executable, dump)
    fcompile = cc.cross_compiler(target.cxx) if target.cxx != "g++" else None
    executable.export_library(str(path), fcompile=fcompile)


def compile_executable(mod, target: TargetSpec, pipeline=None, dump: Path | None = None):
    """The Relax VM executable of ``mod`` for ``target`` (see build_library), not yet exported."""
    import tvm

    tvm_target = codegen_target(target.tvm_target())
    kind = target.target.get("kind")
    if pipeline is None:
        pipeline = (DEFAULT_PIPELINES[kind](tvm_target) if kind in DEFAULT_PIPELINES
                    else "default")
    lowering = tir_pipeline() if kind == "llvm" else "default"
    if dump is not None:
        pipeline = dumping_pipeline(pipeline, tvm_target, dump)
    with _device_toolchain(target):
        try:
            return tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline,
                               tir_pipeline=lowering)
        except Exception as err:
            raise DeploytoolError(f"TVM could not build the model for {target.name} "
                                  f"({last_line(err)})",
                                  "Report it with the model attached") from err


# target kind -> the Relax pipeline an untuned build uses (others: TVM's "default")
DEFAULT_PIPELINES = {"cuda": gpu_pipeline}


def _device_toolchain(target: TargetSpec):
    """nvcc for CUDA kernels while building a GPU target; nothing for a CPU target."""
    if target.target.get("kind") == "cuda":
        from ..toolchains.cuda import kernel_compiler

        return kernel_compiler(target)
    return nullcontext()
