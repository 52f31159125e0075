"""bf16 and fp16 emulated in ONNX Runtime: the float32 model with the operands of each product a
half-width package computes in the half-width type rounded to it, the peer such a package is
validated against (as an int8 one is against ONNX Runtime on its QDQ model).

The rounding is ONNX Runtime's Cast to the type and back (round to nearest even, as the
package's), before each convolution and each matrix product whose weight is a constant (an
initializer, or a Constant node as a frozen TorchScript model exports them); the product reads
a rounded copy of its weight. The sums stay float32, as in the package.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np


def _weight_name(node, grouped: bool) -> str | None:
    """The input of ``node`` that the package's half-width rewrite takes as its constant
    weight; a grouped convolution's only where that rewrite takes them (``grouped``)."""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return node.input[1] if group == 1 or grouped else None
    if node.op_type in ("MatMul", "Gemm"):
        return node.input[1]
    return None


def _rounded(name: str, onnx_type: int, suffix: str):
    """Cast nodes rounding tensor ``name`` to ``onnx_type`` and back, and the float copy's
    name."""
    from onnx import TensorProto, helper

    copy = f"{name}/{suffix}/float"
    return [helper.make_node("Cast", [name], [f"{name}/{suffix}"], to=onnx_type),
            helper.make_node("Cast", [f"{name}/{suffix}"], [copy], to=TensorProto.FLOAT)], copy


def emulated_half(model, half):
    """A copy of the float32 ONNX ``model`` that rounds the products' operands as ``half`` (a
    build.half_rewrites.HalfProducts) does, and how many products it rounds.

    Parameters
    ----------
    model : onnx.ModelProto
    half : HalfProducts

    Returns
    -------
    tuple of (onnx.ModelProto, int)
    """
    from onnx import TensorProto, numpy_helper

    from .quantize import constants_as_initializers

    bf16 = half.dtype == "bfloat16"
    onnx_type = TensorProto.BFLOAT16 if bf16 else TensorProto.FLOAT16
    numpy_type = ml_dtypes.bfloat16 if bf16 else np.float16
    suffix = half.precision
    model = constants_as_initializers(model)  # a copy
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                 if t.data_type == TensorProto.FLOAT}
    copies: dict[str, str] = {}  # a tensor -> its rounded copy (read by several products)
    nodes, count = [], 0
    for node in graph.node:
        weight = _weight_name(node, half.grouped)
        if weight not in constants:
            nodes.append(node)
            continue
        if weight not in copies:
            copies[weight] = f"{weight}/{suffix}"
            rounded = constants[weight].astype(numpy_type).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(rounded, copies[weight]))
        data = node.input[0]
        if data not in copies:
            casts, copies[data] = _rounded(data, onnx_type, suffix)
            nodes += casts
        node.input[0], node.input[1] = copies[data], copies[weight]
        nodes.append(node)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return model, count
