"""The ONNX frontend: load a ``.onnx`` file and read its input and output specs."""

from __future__ import annotations

from pathlib import Path

from ..common import last_line, sha256_of
from ..errors import DeploytoolError
from ..tensors import SYMBOL, TensorSpec
from .model import OnnxModel, SourceModel

ONNX_HINT = "Export it with torch.onnx.export"


def load_onnx(path: Path, inputs: list[TensorSpec] | None) -> SourceModel:
    import onnx

    if path.stat().st_size == 0:
        raise DeploytoolError(f"{path} is empty, not an ONNX model", ONNX_HINT)
    try:
        proto = onnx.load(str(path))
    except Exception as err:
        raise DeploytoolError(f"{path} is not a valid ONNX file ({last_line(err, limit=200)})",
                              ONNX_HINT) from err
    if proto.ir_version == 0 or not proto.HasField("graph") or not proto.graph.output:
        raise DeploytoolError(f"{path} is not an ONNX model (it parses, but has no IR version "
                              "or no graph with outputs)", ONNX_HINT)
    if inputs is None:
        inputs = [_value_spec(v, path) for v in _graph_inputs(proto)]
    return SourceModel(path, "onnx", sha256_of(path), list(inputs), proto)


def _graph_inputs(proto) -> list:
    initializers = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]


def _value_spec(value, path: Path | None = None) -> TensorSpec:
    import onnx

    tensor_type = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else
            (d.dim_param if SYMBOL.fullmatch(d.dim_param) else None)
            for d in tensor_type.shape.dim]
    if None in dims:
        raise DeploytoolError(f"ONNX tensor '{value.name}' of {path} has a symbolic shape",
                              f"Pass its shape with --input {value.name}:SHAPE:DTYPE")
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return TensorSpec(value.name, tuple(dims), dtype)


def prepare_onnx(model: SourceModel) -> OnnxModel:
    """The loaded ONNX model with its outputs' specs, from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model.module)
    outputs = [_value_spec(v, model.path) for v in inferred.graph.output]
    return OnnxModel(model.module, model.inputs, outputs, route="onnx -> relax")
