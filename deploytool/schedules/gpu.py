"""Default CUDA schedules: TVM's DLight rules, with three changes measured on an H200 (batch 1).

- **Short reductions** (depthwise convolutions, pooling windows: a few to a few dozen terms per
  output) get one thread per output (DLight's Fallback). DLight's GeneralReduction gave each
  output a block of 256 threads sharing its 9 terms: MobileNetV2's depthwise convolutions took
  about 2 of its 2.9 ms on the GPU.
- **Long reductions with few outputs** (ResNet's 3x3 convolutions at 7x7 and 14x14: 1152 to 4608
  terms for 25088 to 50176 outputs) are split into parts computed by separate threads and then
  added up (rfactor). DLight's 64x32 matmul tile gave a 7x7x512 convolution 16 blocks for the
  H200's 132 multiprocessors: 0.53 ms, a fifth of ResNet-18; split, 0.20 ms.
- **Other matmul-like kernels with few outputs** take smaller tiles until the grid has a block
  per multiprocessor.
"""

from __future__ import annotations

import math

# Reductions up to this many terms per output run serially in one thread.
SHORT_REDUCTION = 64
# Matmul tiles are made smaller until the grid has this many blocks (an A100 has 108
# multiprocessors, an H100 or H200 132, an L4 58).
MIN_BLOCKS = 128
# Reductions of at least SPLIT_MIN_TERMS terms for SPLIT_OUTPUTS outputs are split so that
# parts x outputs come to about SPLIT_THREADS threads. Measured on an H200: ResNet-18's 3x3
# convolutions at 7x7 and 14x14 (1152-4608 terms, 25088-50176 outputs) ran up to 4x faster, but
# 1x1 convolutions of 576-960 terms (MobileNetV2's at 7x7 and 14x14) 10-20x slower and the
# classifiers (1000 outputs) 4x slower.
SPLIT_MIN_TERMS = 1024
SPLIT_OUTPUTS = range(4096, (1 << 16) + 1)
SPLIT_THREADS = 1 << 18
SPLIT_BLOCK_THREADS = 256
# (threads y, threads x, micro tile y, micro tile x) from DLight's CUDA default downwards.
MATMUL_TILES = ((16, 8, 4, 4), (16, 8, 2, 2), (8, 8, 2, 2))


def launch_shape(func) -> tuple[int, int]:
    """(blocks, threads per block) of the first kernel launch of a scheduled PrimFunc: the
    products of its blockIdx and of its threadIdx loop extents."""
    import tvm_ffi
    from tvm import tirx

    extents: dict[str, int] = {}

    def visit(node):
        if node.kind == tirx.ForKind.THREAD_BINDING and node.thread_binding is not None:
            tag = str(node.thread_binding.thread_tag)
            if isinstance(node.extent, tirx.IntImm):
                extents.setdefault(tag, int(node.extent))

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)], order="post")
    return (math.prod(e for t, e in extents.items() if t.startswith("blockIdx")),
            math.prod(e for t, e in extents.items() if t.startswith("threadIdx")))


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


def _split_parts(terms: int, outputs: int) -> int:
    """How many parts a long reduction is split into (SplitReduction): a power of two up to 16
    that divides it, for about SPLIT_THREADS threads; 1 means no split."""
    parts = 1
    while (parts < 16 and terms % (2 * parts) == 0 and terms // (2 * parts) >= 64
           and outputs * 2 * parts <= SPLIT_THREADS):
        parts *= 2
    return parts


def rules():
    """The DLight rules of an untuned CUDA build, in the order they are tried."""
    from tvm import s_tir, tirx
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    class SplitReduction(GPUScheduleRule):
        """A long reduction with few outputs: split into parts summed separately (rfactor),
        every part of every output a thread, then the parts added up."""

        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
                return None
            sch = s_tir.Schedule(func)
            reductions = [b for b in sch.get_child_blocks(get_root_block(sch))
                          if any(v.iter_type == tirx.IterVar.CommReduce
                                 for v in sch.get(b).iter_vars)]
            if len(reductions) != 1:
                return None
            block = reductions[0]
            iters, loops = sch.get(block).iter_vars, sch.get_loops(block)
            if len(iters) != len(loops) or not all(isinstance(v.dom.extent, tirx.IntImm)
                                                   for v in iters):
                return None
            spatial = [lp for lp, v in zip(loops, iters, strict=True)
                       if v.iter_type == tirx.IterVar.DataPar]
            reduce = [lp for lp, v in zip(loops, iters, strict=True)
                      if v.iter_type == tirx.IterVar.CommReduce]
            terms = math.prod(int(v.dom.extent) for v in iters
                              if v.iter_type == tirx.IterVar.CommReduce)
            outputs = math.prod(int(v.dom.extent) for v in iters
                                if v.iter_type == tirx.IterVar.DataPar)
            parts = _split_parts(terms, outputs)
            if terms < SPLIT_MIN_TERMS or outputs not in SPLIT_OUTPUTS or parts == 1:
                return None
            sch.reorder(*spatial, *reduce)
            outer, _ = sch.split(sch.fuse(*reduce), [parts, None])
            factored = sch.rfactor(outer, factor_axis=0)
            loops = sch.get_loops(factored)  # (outputs..., part, terms): parts outermost, so
            sch.reorder(loops[-2], *loops[:-2])  # that neighbouring threads read neighbours
            for step in sch.get_child_blocks(get_root_block(sch)):  # padding, elementwise steps
                try:
                    sch.compute_inline(step)
                except s_tir.ScheduleError:
                    pass
            for step in sch.get_child_blocks(get_root_block(sch)):
                loops = sch.get_loops(step)
                terms = sum(v.iter_type == tirx.IterVar.CommReduce for v in sch.get(step).iter_vars)
                blocks, threads = sch.split(sch.fuse(*loops[:len(loops) - terms]),
                                            [None, SPLIT_BLOCK_THREADS])
                sch.bind(blocks, "blockIdx.x")
                sch.bind(threads, "threadIdx.x")
                if terms:
                    sch.decompose_reduction(step, loops[len(loops) - terms])
            return sch

    class ShortReduction(dl.gpu.Fallback):
        """One thread per output for reductions of at most SHORT_REDUCTION terms."""

        def apply(self, func, target, tunable):
            terms = _reduction_terms(func) if isinstance(func, tirx.PrimFunc) else None
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
                if launch_shape(schedule.mod["main"])[0] >= MIN_BLOCKS:
                    return schedule
            return schedule

    # Matmul first: a 1x1 convolution of few input channels is a short reduction too.
    return [SplitReduction(), OccupyingMatmul(), ShortReduction(), dl.gpu.GEMV(),
            dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
