"""Default CUDA schedules: TVM's DLight rules, with two changes measured on an H200 (batch 1).

- **Short reductions** (depthwise convolutions, pooling windows: a few to a few dozen terms per
  output) get one thread per output (DLight's Fallback). DLight's GeneralReduction gave each
  output a block of 256 threads sharing its 9 terms: MobileNetV2's depthwise convolutions took
  about 2 of its 2.9 ms on the GPU.
- **Matmul-like kernels with few outputs** (ResNet's 3x3 convolutions at 7x7 and 14x14) take
  smaller tiles until the grid has a block per multiprocessor. DLight's 64x32 tile gave a
  7x7x512 convolution 16 blocks for the H200's 132 multiprocessors: 0.5 ms, a third of ResNet-18.
"""

from __future__ import annotations

import math

# Reductions up to this many terms per output run serially in one thread.
SHORT_REDUCTION = 64
# Matmul tiles are made smaller until the grid has this many blocks (an A100 has 108
# multiprocessors, an H100 or H200 132, an L4 58).
MIN_BLOCKS = 128
# (threads y, threads x, micro tile y, micro tile x) from DLight's CUDA default downwards.
MATMUL_TILES = ((16, 8, 4, 4), (16, 8, 2, 2), (8, 8, 2, 2))


def _grid_blocks(func) -> int:
    """Blocks of the first kernel launch of a scheduled PrimFunc (product of blockIdx extents)."""
    import tvm_ffi
    from tvm import tirx

    extents: dict[str, int] = {}

    def visit(node):
        if node.kind == tirx.ForKind.THREAD_BINDING and node.thread_binding is not None:
            tag = str(node.thread_binding.thread_tag)
            if tag.startswith("blockIdx") and isinstance(node.extent, tirx.IntImm):
                extents.setdefault(tag, int(node.extent))

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)], order="post")
    return math.prod(extents.values()) if extents else 0


def _reduction_terms(func) -> int | None:
    """Terms per output of the PrimFunc's reduction blocks (the largest); None without one."""
    import tvm_ffi
    from tvm import s_tir, tirx

    terms: list[int] = []

    def visit(block):
        extents = [v.dom.extent for v in block.iter_vars if v.iter_type == tirx.IterVar.CommReduce]
        if extents and all(isinstance(e, tirx.IntImm) for e in extents):
            terms.append(math.prod(int(e) for e in extents))
        elif extents:
            terms.append(math.inf)

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, visit)], order="post")
    return max(terms) if terms else None


def rules():
    """The DLight rules of an untuned CUDA build, in the order they are tried."""
    from tvm.s_tir import dlight as dl

    class ShortReduction(dl.gpu.Fallback):
        """One thread per output for reductions of at most SHORT_REDUCTION terms."""

        def apply(self, func, target, tunable):
            terms = _reduction_terms(func) if hasattr(func, "body") else None
            if terms is None or terms > SHORT_REDUCTION:
                return None
            return super().apply(func, target, tunable)

    class OccupyingMatmul(dl.gpu.Matmul):
        """DLight's Matmul, with the largest tile of MATMUL_TILES that gives MIN_BLOCKS."""

        tile = MATMUL_TILES[0]

        def get_configs(self, target):
            config = super().get_configs(target)
            if target.kind.name == "cuda":
                (config.block_size_y, config.block_size_x, config.micro_size_y,
                 config.micro_size_x) = self.tile
            return config

        def apply(self, func, target, tunable):
            schedule = None
            for tile in MATMUL_TILES:
                self.tile = tile
                schedule = super().apply(func, target, tunable)
                if schedule is None or target.kind.name != "cuda":
                    return schedule
                if _grid_blocks(schedule.mod["main"]) >= MIN_BLOCKS:
                    return schedule
            return schedule

    # Matmul first: a 1x1 convolution of few input channels is a short reduction too.
    return [OccupyingMatmul(), ShortReduction(), dl.gpu.GEMV(), dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def legalize_passes(tvm_target) -> list:
    """TVM's CUDA legalize passes (legalize, fuse) with :func:`rules` as the schedules."""
    import tvm
    from tvm.s_tir import dlight as dl

    relax = tvm.relax.transform
    return [relax.LegalizeOps(), relax.AnnotateTIROpPattern(), relax.FoldConstant(),
            relax.FuseOps(), relax.FuseTIR(), dl.ApplyDefaultSchedule(*rules())]
