"""bf16 emulated in ONNX Runtime: the float32 model with the operands of each product a bf16
package computes in bfloat16 rounded to it, the peer a bf16 package is validated against (as
an int8 one is against ONNX Runtime on its QDQ model).

The rounding is ONNX Runtime's Cast to bfloat16 and back (round to nearest even, as the
package's), before each convolution of one group and each matrix product whose weight is a
constant (an initializer, or a Constant node as a frozen TorchScript model exports them); the
product reads a rounded copy of its weight. The sums stay float32, as in the package.
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
    """A copy of the float32 ONNX ``model`` that rounds the products' operands to bfloat16,
    and how many products it rounds.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    tuple of (onnx.ModelProto, int)
    """
    from onnx import TensorProto, helper, numpy_helper

    from .quantize import constants_as_initializers

    model = constants_as_initializers(model)  # a copy
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                 if t.data_type == TensorProto.FLOAT}
    copies: dict[str, str] = {}  # a tensor -> its rounded copy (read by several products)
    nodes, count = [], 0
    for node in graph.node:
        weight = _weight_name(node)
        if weight in constants:
            if weight not in copies:
                copies[weight] = f"{weight}/bf16"
                rounded = constants[weight].astype(ml_dtypes.bfloat16).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(rounded, copies[weight]))
            data = node.input[0]
            if data not in copies:
                copies[data] = f"{data}/bf16/float"
                nodes += [helper.make_node("Cast", [data], [f"{data}/bf16"],
                                           to=TensorProto.BFLOAT16),
                          helper.make_node("Cast", [f"{data}/bf16"], [copies[data]],
                                           to=TensorProto.FLOAT)]
            node.input[0], node.input[1] = copies[data], copies[weight]
            count += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model, count
