"""TIR lowering of CPU builds: TVM's default pipeline, with small kernels on one thread,
per-tile scratch on the stack, merged clamps, vectorizable rounding, exp, sigmoid, tanh and erf,
and max/min against a constant that keep NaN."""

from __future__ import annotations

import math

from ..schedules.products import FLOPS
from .clamps import ROUND, merged_clamps

TIR_PIPELINE = "deploytool-cpu"
# Scratch buffers allocated inside a parallel loop up to this size live on the worker's stack.
# TVM puts any buffer of 1 KiB or more in its workspace pool, one allocation and free per tile:
# the padded input rows and the accumulators of depthwise convolutions' tiles cost MobileNetV2
# 9% of its time that way. Worker threads have megabytes of stack; 16 KiB leaves room on small
# ones (Android, a JVM's).
STACK_SCRATCH_BYTES = 16 * 1024
# Kernels of fewer floating-point operations run on the calling thread alone: waking the thread
# pool costs more than they do. Measured on a 2-core Zen 3 (one launch about 1 us): a 256x128
# matrix-vector product took 1.7 us on one thread, 2.1 us on two; a 512x256 one 8.6 us on one,
# 4.4 us on two.
SINGLE_THREAD_FLOPS = 128 * 1024
# ... unless they read and write at least this many bytes (copies count no operations): a serial
# copy of 512 KiB took 2.1 us and a parallel one 3.0 us, at 8 MiB the parallel one 41 us and the
# serial one 69 us (Zen 5, 2 threads).
SINGLE_THREAD_BYTES = 1 << 20
SINGLE_THREAD = "deploytool.single_thread"  # the attribute of a kernel made single-threaded
# float32 functions computed inline as polynomials (TVM's own topi.fast_exp, fast_tanh, fast_erf:
# Cephes' and Eigen's approximations, a few ulp) instead of a libm call per element, which LLVM
# makes of a vector of them: over 1.2M floats on one Zen 4 core, sigmoid took 7.1 ms as libm
# calls and 0.67 ms inline, erf 37 ms, tanh 20 ms, exp 7.4 ms (inline exp 0.66 ms).
FAST_MATH = ("tirx.exp", "tirx.sigmoid", "tirx.tanh", "tirx.erf")
# The largest argument of a FAST_MATH call written into its polynomial instead of bound by a Let
# (see _polynomial): an int8 epilogue's requantized value has about 60.
SUBSTITUTED_NODES = 128
# LLVM flags of CPU builds: floating-point additions may be reassociated, so that LLVM vectorizes
# the scalar reductions schedules leave it (a softmax's row sums with several vector
# accumulators: a ViT's softmax 437 -> 134 us, its layer norm 99 -> 14 us, on one Zen 4 core).
# No nnan or ninf: models test for NaN and mask with infinities.
CODEGEN_FLAGS = {"fast-math-reassoc": True, "fast-math-nsz": True}


def tir_pipeline() -> str:
    """The name of the TIR pipeline for ``tvm.compile(..., tir_pipeline=)``, registered on
    first use: TVM's default one, with :func:`single_thread_when_small` before it and
    :func:`scratch_on_stack` before the host finalization."""
    from tvm.tirx import compilation_pipeline

    if TIR_PIPELINE not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, _pipeline)
    return TIR_PIPELINE


def codegen_target(target):
    """``target`` (a ``tvm.target.Target``) with CODEGEN_FLAGS where it is an llvm one."""
    import tvm

    if target.kind.name != "llvm":
        return target
    config = {k: v for k, v in target.export().items() if k not in ("keys", "tag")}
    return tvm.target.Target({**config, **CODEGEN_FLAGS})


def _pipeline(**kwargs):
    import tvm
    from tvm.tirx import compilation_pipeline

    lower, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("default",
                                                                                 **kwargs)

    def finalize_host_on_stack():
        return tvm.transform.Sequential([scratch_on_stack(), finalize_host(),
                                         nan_keeping_max_min()])

    return (tvm.transform.Sequential([single_thread_when_small(), merged_clamps(),
                                      vector_rounding(), inline_fast_math(),
                                      bf16_casts_without_lets(), lower]),
            finalize_host_on_stack, finalize_device)


def inline_fast_math():
    """A pass computing the float32 calls of FAST_MATH inline as polynomials (sigmoid as
    ``1 / (1 + exp(-x))``), so that they vectorize: LLVM turns a vector exp, tanh or erf into
    one libm call per element. The approximations are TVM's own (``topi.fast_exp``,
    ``fast_tanh``, ``fast_erf``), within a few ulp of libm's."""
    import tvm
    import tvm_ffi
    from tvm.ir.expr import Call

    float32 = tvm.ir.PrimType("float32")

    def fast(call):
        if getattr(call.op, "name", None) not in FAST_MATH or call.ty != float32:
            return call
        if call.op.name == "tirx.sigmoid":
            one = tvm.tirx.const(1.0, "float32")
            return one / (one + _polynomial("tirx.exp", -call.args[0]))
        return _polynomial(call.op.name, call.args[0])

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="InlineFastMath")
    def transform(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(Call, fast)])

    return transform


def vector_rounding():
    """A pass writing float32 ``nearbyint`` (an int8 epilogue's rounding, half to even) as
    ``round``, which the LLVM code generator emits as the same ``llvm.nearbyint``, one vector
    instruction: TVM's lowering of ``nearbyint`` computes a vector element by element, which
    LLVM then vectorizes at its preferred width, 8 floats on Intel's AVX-512 CPUs. MobileNetV2's
    int8 package ran 1.3x to 1.5x faster with its epilogues in 16-float vectors."""
    import tvm
    import tvm_ffi
    from tvm.ir.expr import Call

    float32 = tvm.ir.PrimType("float32")

    def rounded(call):
        if getattr(call.op, "name", None) != ROUND or call.ty != float32:
            return call
        return tvm.tirx.round(call.args[0])

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="VectorRounding")
    def transform(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(Call, rounded)])

    return transform


def bf16_casts_without_lets():
    """A pass substituting the Lets inside each cast to bfloat16 (an inlined erf or exp, see
    :func:`inline_fast_math`): TVM's legalization rounds the value with integer operations that
    read it twice, and a copied Let binds its variable twice, which vectorization refuses
    (ViT's GELU before a bf16 matrix product). LLVM computes the copies once."""
    import tvm
    import tvm_ffi
    from tvm.tirx import expr

    def substituted(let):
        return tvm_ffi.structural_map(
            let.body, [(expr.Var, lambda var: let.value if var.same_as(let.var) else var)])

    def without_lets(cast):
        if not str(cast.ty).startswith("bfloat16"):
            return cast
        return tvm_ffi.structural_map(cast, [(expr.Let, substituted)])

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="Bf16CastsWithoutLets")
    def transform(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(expr.Cast, without_lets)])

    return transform


def _polynomial(name: str, value):
    """TVM's fast float32 approximation of ``name`` (tirx.exp, tanh or erf) at ``value``, as
    one expression: topi's compute with its blocks inlined, ``value`` written where it is read
    (LLVM computes the copies once) unless it has more than SUBSTITUTED_NODES nodes, then bound
    once (a Let). TVM's loop partition copies a loop body, Lets included, and vectorization then
    refuses the twice-bound variable: EfficientNet's int8 kernels with a swish in their
    epilogue failed to build. The bound keeps nested calls from multiplying in size."""
    import tvm
    import tvm_ffi
    from tvm import s_tir, te, topi
    from tvm.ir.expr import TensorLoad

    if name not in _POLYNOMIALS:
        x = te.placeholder((1,), "float32", name="x")
        compute = {"tirx.exp": topi.fast_exp, "tirx.tanh": topi.fast_tanh,
                   "tirx.erf": topi.fast_erf}[name]
        sch = s_tir.Schedule(te.create_prim_func([x, compute(x)]))
        *steps, last = sch.get_child_blocks(sch.get_sblock("root"))
        for step in steps:
            sch.compute_inline(step)
        _POLYNOMIALS[name] = sch.get(last).body.value  # reads x[0] where it reads the input
    if _nodes(value) <= SUBSTITUTED_NODES:
        return tvm_ffi.structural_map(_POLYNOMIALS[name], [(TensorLoad, lambda _load: value)])
    var = tvm.tirx.Var("x", "float32")
    return tvm.tirx.Let(var, value, tvm_ffi.structural_map(_POLYNOMIALS[name],
                                                           [(TensorLoad, lambda _load: var)]))


def _nodes(expr) -> int:
    """How many nodes the expression tree ``expr`` has."""
    import tvm_ffi

    count = 0

    def one(_node):
        nonlocal count
        count += 1

    tvm_ffi.structural_walk(expr, one)
    return count


_POLYNOMIALS: dict = {}


def single_thread_when_small():
    """A pass making the parallel loops of a kernel of under SINGLE_THREAD_FLOPS (as estimated,
    or as its tiles' schedule counted them: products.FLOPS) and SINGLE_THREAD_BYTES serial, and
    marking the kernel SINGLE_THREAD (for :func:`scratch_on_stack`)."""
    import tvm
    import tvm_ffi
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.tirx import stmt

    def serial(loop):
        if loop.kind != stmt.ForKind.PARALLEL:
            return loop
        return stmt.For(loop.loop_var, loop.min, loop.extent, stmt.ForKind.SERIAL, loop.body,
                        annotations=loop.annotations, step=loop.step, span=loop.span)

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="SingleThreadWhenSmall")
    def transform(func, _mod, _ctx):
        try:
            flops = estimate_tir_flops(tvm.IRModule({"main": func}))
        except Exception:  # a kernel the estimate cannot analyse keeps its threads
            return func
        flops = max(flops, int(func.attrs.get(FLOPS, 0)) if func.attrs else 0)
        if flops >= SINGLE_THREAD_FLOPS or _argument_bytes(func) >= SINGLE_THREAD_BYTES:
            return func
        return tvm_ffi.structural_map(func, [(stmt.For, serial)]).with_attr(SINGLE_THREAD, True)

    return transform


def _argument_bytes(func) -> int:
    """Bytes of the kernel's buffer arguments (0 where a shape is symbolic)."""
    import math

    try:
        return sum(math.prod(int(d) for d in p.ty.shape) * p.ty.dtype.dtype.bits // 8
                   for p in func.params if hasattr(p.ty, "shape"))
    except TypeError:
        return 0


def nan_keeping_max_min():
    """A pass writing ``max(x, c)`` / ``min(x, c)`` of floats, c a constant, as ``max(c, x)`` /
    ``min(c, x)``: LLVM code generation lowers ``max(a, b)`` to ``a > b ? a : b``, which returns
    b when a is NaN. With the constant first, a NaN x comes out as NaN, as in PyTorch and ONNX
    Runtime (relu, relu6, clamp, hardtanh); the same compare and select, so no slower. Runs
    last, after the simplifier (which puts constants second)."""
    import tvm
    import tvm_ffi
    from tvm.tirx import expr

    def constant(value):
        if isinstance(value, expr.Broadcast):
            value = value.value
        return isinstance(value, expr.FloatImm)

    def swap(node):
        if "float" not in str(node.ty):  # float32, float32x8, bfloat16, ...
            return node
        if constant(node.b) and not constant(node.a):
            return type(node)(node.b, node.a, span=node.span)
        return node

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="NanKeepingMaxMin")
    def transform(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(expr.Max, swap), (expr.Min, swap)])

    return transform


def scratch_on_stack():
    """A pass marking buffers allocated inside a parallel loop (anywhere in a SINGLE_THREAD
    kernel), of a constant size up to STACK_SCRATCH_BYTES, to be left on the stack by
    ``LowerTVMBuiltin``."""
    import tvm
    import tvm_ffi
    from tvm.tirx import stmt

    def on_stack(alloc):
        if not 0 < _size(alloc.buffer) <= STACK_SCRATCH_BYTES:
            return alloc
        annotations = {**(alloc.annotations or {}),
                       "disable_lower_builtin": tvm.tirx.IntImm("bool", 1)}
        return stmt.AllocBuffer(alloc.buffer, annotations=annotations, span=alloc.span)

    def in_parallel(loop):
        if loop.kind != stmt.ForKind.PARALLEL:
            return loop
        return tvm_ffi.structural_map(loop, [(stmt.AllocBuffer, on_stack)])

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="ScratchOnStack")
    def transform(func, _mod, _ctx):
        if func.attrs is not None and SINGLE_THREAD in func.attrs:
            return tvm_ffi.structural_map(func, [(stmt.AllocBuffer, on_stack)])
        return tvm_ffi.structural_map(func, [(stmt.For, in_parallel)], order="pre")

    return transform


def _size(buffer) -> int:
    """Bytes of a buffer, 0 when its shape is not constant."""
    try:
        return math.prod(int(d) for d in buffer.shape) * buffer.dtype.bits * buffer.dtype.lanes // 8
    except TypeError:
        return 0
