"""Which tile schedules a convolution or matrix product by a constant weight: AMX's
(schedules/amx.py) where the CPU has it, else the register tile of a dot-product instruction
(schedules/dot_products.py), in the order of INSTRUCTIONS; a product none takes is left to the
float32 schedules."""

from __future__ import annotations

from . import amx
from .cpu import _block_names
from .dot_products import AMX_BF16, AMX_INT8, BF16, SDOT, VNNI, VNNI_8, DotInstruction, _tile

DOT_BLOCKS = ("conv2d_nhwc", "group_conv2d_nhwc", "matmul")
# The attribute of a tiled kernel holding its operations, counted before the tiles (an estimate
# of the scheduled kernel sees none in an instruction's call) in float32 multiply-adds' worth:
# divided by the instruction's group, the products a lane sums where vfmadd231ps sums one.
# build/lowering.py runs a kernel of few on one thread: the three smallest bf16 convolutions of
# SqueezeNet at 64x64 took 1.1-2.2 us there, 2.8-5.6 us on two threads (vdpbf16ps at vfmadd's
# rate, each kernel's fastest of 4 profiles).
FLOPS = "deploytool.flops"
INSTRUCTIONS = (AMX_INT8, VNNI, VNNI_8, AMX_BF16, BF16, SDOT)


def target_instructions(target) -> tuple[DotInstruction, ...]:
    """The dot-product instructions a ``tvm.target.Target`` has."""
    from tvm.target.codegen import target_has_features

    return tuple(i for i in INSTRUCTIONS if target_has_features(i.feature, target))


def grouped_lanes(target) -> int:
    """The output channels per group of the grouped convolutions a ``tvm.target.Target``'s
    integer tiles take: a multiple of their narrowest vector (0 where it has no such tile, and
    the float32 grouped tile is the faster)."""
    return min((i.lanes for i in target_instructions(target) if i.accumulator == "int32"),
               default=0)


def schedule_dot_product(func, instructions=INSTRUCTIONS):
    """The tensorized schedule of a fused kernel whose main block is a convolution (grouped
    ones: groups of whole vectors, see build.half_rewrites and build.int8_rewrites) or matrix
    product by a constant weight in the dtypes of one of ``instructions``, and the instruction;
    or (None, None) when it is not one (or its channels do not split into 16s and groups)."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir.analysis import estimate_tir_flops

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    names = _block_names(sch)
    main = next((n for n in DOT_BLOCKS if n in names), None)
    if main is None:
        return None, None
    computed = [i for i in instructions if _computes(sch, sch.get_sblock(main), i)]
    for instruction in computed:
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        try:
            tiled = _tile_with(instruction)(sch, func, names, main, instruction)
        except Exception:  # a form this schedule does not cover (tests check the forms it does)
            continue
        if tiled:
            flops = int(estimate_tir_flops(tvm.IRModule({"main": func}))) // instruction.group
            return (sch.mod["main"].with_attrs({"tirx.is_scheduled": True, FLOPS: flops}),
                    instruction)
    return None, None


def _tile_with(instruction: DotInstruction):
    """The schedule of the instruction's tile."""
    return amx.tile_amx if instruction in (AMX_BF16, AMX_INT8) else _tile


def _computes(sch, block, instruction: DotInstruction) -> bool:
    """Whether the block multiplies the instruction's dtypes into its accumulator's."""
    stmt = sch.get(block)
    inputs = sorted(str(r.source.dtype) for r in stmt.reads
                    if str(r.source.dtype) in (instruction.data, instruction.weight))
    return (len(inputs) == 2 and inputs == sorted([instruction.data, instruction.weight])
            and str(stmt.writes[0].source.dtype) == instruction.accumulator)
