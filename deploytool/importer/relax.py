"""Import an ONNX model into TVM Relax, naming every operator TVM cannot convert."""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager, redirect_stdout
from functools import cache

from ..common import last_line
from ..errors import DeploytoolError
from ..frontends.dynamic import annotate_bounds, relax_output_specs, relax_shape_dict
from ..frontends.exported import import_exported
from ..frontends.model import ExportedModel, GraphModel, RelaxModel
from ..tensors import symbol_bounds, with_bounds
from .converters import CONVERTERS, apply_converters, apply_onnx_fixes, fold_with_onnxruntime


def operator_counts(proto) -> Counter:
    """How often each ONNX operator occurs in the graph (subgraphs included)."""
    counts: Counter = Counter()

    def visit(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(proto.graph)
    return counts


# Operators from_onnx converts itself, outside its converter map.
DIRECTLY_HANDLED = ("If", "Constant")


def tvm_missing_operators(proto) -> list[str]:
    """The ONNX operators of the model that TVM's Relax ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = {*_get_convert_map(), *DIRECTLY_HANDLED}
    return sorted(op for op in operator_counts(proto) if op not in supported)


def unsupported_operators(proto) -> list[str]:
    """The ONNX operators that neither TVM's frontend nor deploytool's converters can import.

    An operator TVM lacks counts as supported when ``converters.CONVERTERS`` has a converter for
    it and it occurs only in the main graph (converters do not rewrite subgraphs).
    """
    top_level = {node.op_type for node in proto.graph.node}
    nested = operator_counts(proto)
    for op in top_level:
        nested[op] -= sum(1 for node in proto.graph.node if node.op_type == op)
    return [op for op in tvm_missing_operators(proto)
            if op not in CONVERTERS or nested[op] > 0]


# How to get around an operator that cannot be imported, by operator.
WORKAROUNDS = {
    "Loop": "Give the loop a constant trip count (for _ in range(N) with N fixed) so the "
            "exporter unrolls it; a loop whose trip count depends on the data cannot be compiled",
    "Scan": "Unroll the scan over a fixed length, or save the model with torch.export.save and "
            "compile the .pt2",
    "RNN": "Use nn.LSTM or nn.GRU, which deploytool converts, or write the recurrence with "
           "nn.Linear and torch.tanh over a fixed sequence length",
}
DEFAULT_WORKAROUND = ("Replace them in the model with supported operations, or save the model "
                      "with torch.export.save and compile the .pt2 (which skips ONNX)")


@cache  # the frontend asks for its table more than once per import
def _clip_converter():
    """TVM's ONNX Clip converter, emitting Relax maximum/minimum instead of opaque kernels.

    TVM emits Clip as TE kernels that its layout conversion cannot see through, so a
    channels-last convolution followed by ReLU6 was transposed to NCHW and back around every
    activation (MobileNetV2: 17 pairs of transposes, about a third of its time).
    """
    import numpy as np
    from tvm import ir, relax
    from tvm.relax.frontend.onnx import onnx_frontend

    class Clip(onnx_frontend.Clip):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            result = inputs[0]
            for bound, op, unbounded in ((inputs[1], relax.op.maximum, -np.inf),
                                         (inputs[2], relax.op.minimum, np.inf)):
                if bound is None:
                    continue
                if isinstance(bound, ir.GenericConst) and bound.value.numpy().size == 1:
                    value = bound.value.numpy()  # NaN means unbounded in ONNX
                    bound = relax.const(np.where(np.isnan(value), unbounded, value)
                                        .astype(value.dtype).reshape(()), str(value.dtype))
                else:
                    bound = cls._sanitize_nan_clip_bound(bb, bound,
                                                         for_min=op is relax.op.maximum)
                result = bb.emit(op(result, bound))
            return result

    return Clip


@contextmanager
def _our_frontend_converters():
    """TVM's ONNX frontend with our converters in its table, while importing."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map

    def convert_map():
        return {**original(), "Clip": _clip_converter()}

    onnx_frontend._get_convert_map = convert_map
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original


def unknown_shapes(mod) -> int:
    """How many tensors bound in ``mod``'s Relax functions have no known shape."""
    from tvm import relax

    count = 0
    for function in mod.functions.values():
        if not isinstance(function, relax.Function):
            continue
        body = function.body
        for block in getattr(body, "blocks", []):
            for binding in block.bindings:
                ty = getattr(binding.var, "ty", None)
                if isinstance(ty, relax.TensorType) and ty.shape is None:
                    count += 1
    return count


def import_relax(model: GraphModel):
    """The Relax IRModule of ``model``, with the weights bound as constants (see import_model)."""
    return import_model(model).mod


def import_model(model: GraphModel) -> RelaxModel:
    """Convert to a Relax IRModule with the weights bound as constants; ``model`` is unchanged.

    Parameters
    ----------
    model : OnnxModel or ExportedModel

    Returns
    -------
    RelaxModel
        The module, and the specs and notes after import (symbolic dimensions get their bounds).
    """
    from tvm.relax.frontend.onnx import from_onnx

    if isinstance(model, ExportedModel):  # a torch.export program: no ONNX on this route
        return RelaxModel(import_exported(model), list(model.inputs), list(model.outputs),
                          list(model.notes), model.route)
    missing = unsupported_operators(model.proto)
    if missing:
        hints = [WORKAROUNDS[op] for op in missing if op in WORKAROUNDS]
        raise DeploytoolError(
            f"TVM's Relax ONNX frontend cannot import operator(s) {', '.join(missing)} "
            "(stage import)", "; ".join(hints) if hints else DEFAULT_WORKAROUND)
    proto, notes = apply_converters(model.proto, set(tvm_missing_operators(model.proto)))
    proto, fixed = apply_onnx_fixes(proto)
    notes += fixed
    inputs, outputs = list(model.inputs), list(model.outputs)
    dynamic = any(s.is_dynamic for s in inputs)

    def convert(graph):
        # from_onnx prints the failing operator's IR to stdout; it is one of the messages
        # collected from stderr (see messages.py), the failure itself is reported in a line.
        with _our_frontend_converters(), redirect_stdout(sys.stderr):
            return from_onnx(graph, shape_dict=(relax_shape_dict(inputs) if dynamic else
                                                {s.name: list(s.shape) for s in inputs}),
                             dtype_dict={s.name: s.dtype for s in inputs},
                             keep_params_in_input=False)

    try:
        mod = convert(proto)
    except Exception as err:
        first = DeploytoolError(f"TVM's ONNX import failed ({last_line(err)})",
                                "Simplify the failing part of the model or report it")
        try:  # fold the shape arithmetic TVM lost track of, and try once more
            folded = fold_with_onnxruntime(proto)
            mod = convert(folded)
        except Exception:
            raise first from err
        notes.append(f"TVM's ONNX import failed ({last_line(err, limit=200)}); imported after "
                     f"constant folding by ONNX Runtime ({len(proto.graph.node)} -> "
                     f"{len(folded.graph.node)} nodes)")
    if not dynamic and unknown_shapes(mod):
        # shapes computed in the graph (torch.chunk, view(x.size(0), ...)) can leave tensors whose
        # shape TVM does not know, which its build then refuses (emit_te needs a ShapeExpr)
        try:
            folded = fold_with_onnxruntime(proto)
            refolded = convert(folded)
        except Exception:
            refolded = None
        if refolded is not None and unknown_shapes(refolded) < unknown_shapes(mod):
            notes.append(f"{unknown_shapes(mod)} tensor(s) of unknown shape after TVM's ONNX "
                         f"import; imported after constant folding by ONNX Runtime "
                         f"({len(proto.graph.node)} -> {len(folded.graph.node)} nodes)")
            mod = refolded
    if dynamic or any(s.is_dynamic for s in outputs):
        # bounds for memory planning; output shapes in terms of the input symbols
        inputs = with_bounds(inputs, symbol_bounds(inputs))
        outputs = relax_output_specs(mod, outputs, inputs)
        mod = annotate_bounds(mod, inputs)
    return RelaxModel(mod, inputs, outputs, [*model.notes, *notes], model.route)
