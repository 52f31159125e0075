"""Import an ONNX model into TVM Relax, naming every operator TVM cannot convert."""

from __future__ import annotations

from collections import Counter

from .errors import DeploytoolError
from .frontends import OnnxModel


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


def unsupported_operators(proto) -> list[str]:
    """The ONNX operators of the model that TVM's Relax ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = _get_convert_map()
    return sorted(op for op in operator_counts(proto) if op not in supported)


def import_relax(model: OnnxModel):
    """Convert to a Relax IRModule with the weights bound as constants.

    Parameters
    ----------
    model : OnnxModel

    Returns
    -------
    tvm.IRModule
    """
    from tvm.relax.frontend.onnx import from_onnx

    missing = unsupported_operators(model.proto)
    if missing:
        raise DeploytoolError(
            f"TVM's Relax ONNX frontend cannot import operator(s) {', '.join(missing)}",
            "Replace them in the model with supported operations")
    try:
        return from_onnx(model.proto, shape_dict={s.name: list(s.shape) for s in model.inputs},
                         dtype_dict={s.name: s.dtype for s in model.inputs},
                         keep_params_in_input=False)
    except Exception as err:
        message = str(err).strip().splitlines()
        raise DeploytoolError(f"TVM's ONNX import failed ({message[-1] if message else err})",
                              "Simplify the failing part of the model or report it") from err
