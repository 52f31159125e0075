"""bf16 emulated in ONNX Runtime: the float32 model with the operands of each product a bf16
package computes in bfloat16 rounded to it, the peer a bf16 package is validated against (as
an int8 one is against ONNX Runtime on its QDQ model).

The rounding is ONNX Runtime's Cast to bfloat16 and back (round to nearest even, as the
package's), before each convolution of one group and each matrix product whose weight is an
initializer; the weights are rounded in place. The sums stay float32, as in the package.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np


def _weight_name(node) -> str | None:
    """The input of ``node`` that the package's bf16 rewrite takes as its constant weight."""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return node.input[1] if group == 1 else None
    if node.op_type in ("MatMul", "Gemm"):
        return node.input[1]
    return None


def emulated_bf16(model):
    """A copy of the float32 ONNX ``model`` that rounds the products' operands to bfloat16.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    onnx.ModelProto
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    rounded: set[str] = set()
    casts: dict[str, str] = {}  # an input -> its rounded copy (read by several products)
    nodes = []
    for node in graph.node:
        weight = _weight_name(node)
        if weight in initializers and initializers[weight].data_type == TensorProto.FLOAT:
            if weight not in rounded:
                tensor = initializers[weight]
                value = numpy_helper.to_array(tensor)
                tensor.CopyFrom(numpy_helper.from_array(
                    value.astype(ml_dtypes.bfloat16).astype(np.float32), weight))
                rounded.add(weight)
            data = node.input[0]
            if data not in casts:
                short = casts[data] = f"{data}/bf16"
                nodes += [helper.make_node("Cast", [data], [short], to=TensorProto.BFLOAT16),
                          helper.make_node("Cast", [short], [f"{short}/float"],
                                           to=TensorProto.FLOAT)]
            node.input[0] = f"{casts[data]}/float"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model
