"""bf16 and fp16 emulated in ONNX Runtime: the float32 model with the operands of each product a
half-width package computes in the half-width type rounded to it, the peer such a package is
validated against (as an int8 one is against ONNX Runtime on its QDQ model).

The rounding is ONNX Runtime's Cast to the type and back (round to nearest even, as the
package's), before each convolution and each matrix product whose weight is a constant (an
initializer, or a Constant node as a frozen TorchScript model exports them), and in bf16 before
each matrix product of two activations; the product reads a rounded copy of its weight. The
sums stay float32, as in the package.

A jittered copy moves each rounded activation by up to JITTER_ULPS float32 ulps first (a seeded
``RandomUniformLike`` factor): what summing in another order does to the package's values. Where
the rounding amplifies that through the model (EfficientNet-B0 with random weights: two such
copies differ by cosine 0.998, as much as the package differs from the plain one), the
copies' spread is how far a correct package may be from the closest.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

JITTER_ULPS = 2  # float32 ulps (of 2^-23 relative) that float32 sums in another order move
JITTER_SEEDS = (1, 2)  # jittered copies a package is validated against, beside the plain one


def _weight_name(node, half, constants: dict) -> str | None:
    """The input of ``node`` that the package's half-width rewrite takes as its constant
    weight; a grouped convolution's only where that rewrite takes it."""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = constants.get(node.input[1])
        return (node.input[1] if weight is not None and weight.ndim == 4
                and half.takes_convolution(group, weight.shape) else None)
    if node.op_type in ("MatMul", "Gemm"):
        return node.input[1]
    return None


def _activation_product(node, half, constants: dict, columns: dict) -> bool:
    """Whether ``node`` is a matrix product of two activations that ``half`` computes in the
    half-width type (attention's, in bf16); ``columns``: the last dimension of each tensor
    whose shape ONNX's shape inference knows."""
    return (node.op_type in ("MatMul", "Gemm")
            and not any(name in constants for name in node.input[:2])
            and half.takes_activations(columns.get(node.output[0])))


def _columns(model) -> dict:
    """The static last dimension of each tensor of ``model`` that ONNX's shape inference
    finds."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    found = {}
    for info in [*graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value"):
            found[info.name] = dims[-1].dim_value
    return found


def _rounded(name: str, onnx_type: int, suffix: str, jitter: int | None):
    """Nodes rounding tensor ``name`` to ``onnx_type`` and back (first moved by up to
    JITTER_ULPS, seeded by ``jitter``, where it is not None), and the float copy's name."""
    from onnx import TensorProto, helper

    nodes, source, copy = [], name, f"{name}/{suffix}/float"
    if jitter is not None:
        spread = JITTER_ULPS * 2.0 ** -23
        source = f"{name}/jittered"
        nodes = [helper.make_node("RandomUniformLike", [name], [f"{name}/jitter"],
                                  low=1 - spread, high=1 + spread, seed=float(jitter)),
                 helper.make_node("Mul", [name, f"{name}/jitter"], [source])]
    return nodes + [
        helper.make_node("Cast", [source], [f"{name}/{suffix}"], to=onnx_type),
        helper.make_node("Cast", [f"{name}/{suffix}"], [copy], to=TensorProto.FLOAT)], copy


def emulated_half(model, half, jitter: int | None = None):
    """A copy of the float32 ONNX ``model`` that rounds the products' operands as ``half`` (a
    build.half_rewrites.HalfProducts) does, and how many products it rounds.

    Parameters
    ----------
    model : onnx.ModelProto
    half : HalfProducts
    jitter : int, optional
        The seed of a jittered copy: each rounded activation moved by up to JITTER_ULPS first
        (see the module's docstring).

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
    columns = _columns(model) if half.activations else {}
    copies: dict[str, str] = {}  # a tensor -> its rounded copy (read by several products)
    nodes, count = [], 0
    for node in graph.node:
        weight = _weight_name(node, half, constants)
        if weight in constants:
            if weight not in copies:
                copies[weight] = f"{weight}/{suffix}"
                rounded = constants[weight].astype(numpy_type).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(rounded, copies[weight]))
            activations = [node.input[0]]
        elif _activation_product(node, half, constants, columns):
            activations = list(node.input[:2])
        else:
            nodes.append(node)
            continue
        for data in activations:
            if data not in copies:
                casts, copies[data] = _rounded(data, onnx_type, suffix, jitter)
                nodes += casts
        node.input[0], node.input[1] = (copies[name] for name in node.input[:2])
        nodes.append(node)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return model, count
