"""The CUDA build: TVM's CUDA pipeline with our DLight rules (every kernel gets threads)."""

from __future__ import annotations

from ..schedules.gpu import rules


def gpu_pipeline(tvm_target):
    """TVM's CUDA pipeline (legalize, fuse, schedule, lower) with schedules.gpu's DLight rules,
    so that every kernel has thread bindings untuned."""
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        with tvm_target:
            return tvm.transform.Sequential(
                cuda.library_dispatch_passes(tvm_target) + legalize_passes(tvm_target)
                + cuda.dataflow_lower_passes(tvm_target) + cuda.finalize_passes(tvm_target))(mod)

    return pipeline


def legalize_passes(tvm_target) -> list:
    """TVM's CUDA legalize passes (legalize, fuse), then schedules.gpu's rules."""
    import tvm
    from tvm.s_tir import dlight as dl

    relax = tvm.relax.transform
    return [relax.LegalizeOps(), relax.AnnotateTIROpPattern(), relax.FoldConstant(),
            relax.FuseOps(), relax.FuseTIR(), dl.ApplyDefaultSchedule(*rules())]
