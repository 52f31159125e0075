"""Model frontends: load a model file (TorchScript or ONNX) and bring it to ONNX."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeploytoolError
from .tensors import SYMBOL, TensorSpec, concrete_specs, parse_inputs_json

SAVE_HINT = "Save it with torch.jit.save(torch.jit.script(model), path)"


@dataclass
class SourceModel:
    """A model file as loaded, with its input specs."""

    path: Path
    format: str
    sha256: str
    inputs: list[TensorSpec]
    module: Any = None  # the torch.jit.ScriptModule or the onnx.ModelProto

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass
class OnnxModel:
    """An ONNX model with its resolved input and output specs."""

    proto: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str] = field(default_factory=list)
    route: str = ""  # how the model got here, e.g. "torchscript -> onnx -> relax"
    program: Any = None  # a torch.export ExportedProgram, imported without ONNX (proto is None)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sample_inputs(specs: list[TensorSpec], seed: int = 0,
                  sizes: dict[str, int] | None = None) -> list[np.ndarray]:
    """Seeded sample data: floats in [-1, 1), integers in [0, 10), booleans; symbolic
    dimensions take their size in ``sizes`` (default 1)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in concrete_specs(specs, sizes):
        if spec.dtype.startswith("float"):
            arrays.append(rng.uniform(-1, 1, spec.shape).astype(spec.dtype))
        elif spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, spec.shape).astype(bool))
        else:
            arrays.append(rng.integers(0, 10, spec.shape).astype(spec.dtype))
    return arrays


def load_model(path: str | Path, inputs: list[TensorSpec] | None = None) -> SourceModel:
    """Load a TorchScript (``.pt``) or ONNX (``.onnx``) model file.

    Parameters
    ----------
    path : str or Path
        The model file.
    inputs : list of TensorSpec, optional
        Input specs; None means those stored with the model (TorchScript ``inputs.json``, or the
        ONNX graph's static input shapes).

    Returns
    -------
    SourceModel
    """
    path = Path(path)
    if not path.is_file():
        raise DeploytoolError(f"model file {path} not found", "Check the path")
    loader = FRONTENDS[SUFFIXES.get(path.suffix, "torchscript")]
    return loader(path, inputs)


def _load_torchscript(path: Path, inputs: list[TensorSpec] | None) -> SourceModel:
    import torch

    if not zipfile.is_zipfile(path):
        raise DeploytoolError(f"{path} is not a TorchScript file (not a zip archive)", SAVE_HINT)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if not any("/code/" in n or n.startswith("code/") for n in names):
        raise DeploytoolError(
            f"{path} was saved with torch.save (a state_dict or a pickled module), "
            "not as TorchScript", SAVE_HINT)
    extra = {"inputs.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        raise DeploytoolError(f"{path} could not be loaded as TorchScript "
                              f"({str(err).strip().splitlines()[0]})", SAVE_HINT) from err
    module.eval()
    if inputs is None:
        stored = extra["inputs.json"]
        if not stored:
            raise DeploytoolError(
                f"{path} carries no input shapes",
                "Pass --input NAME:SHAPE:DTYPE (for example --input x:1x512:float32), or save "
                "inputs.json in the file's extra files (see README)")
        inputs = parse_inputs_json(stored.decode() if isinstance(stored, bytes) else stored)
    expected = len(module.forward.schema.arguments) - 1
    if len(inputs) != expected:
        raise DeploytoolError(
            f"the model's forward() takes {expected} input(s) but {len(inputs)} were given "
            f"({', '.join(map(str, inputs))})", "Pass one --input per forward() argument")
    return SourceModel(path, "torchscript", sha256_of(path), list(inputs), module)


def _load_onnx(path: Path, inputs: list[TensorSpec] | None) -> SourceModel:
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as err:
        raise DeploytoolError(f"{path} is not a valid ONNX file ({err})",
                              "Export it with torch.onnx.export") from err
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


def to_onnx(model: SourceModel, opset: int = 17) -> OnnxModel:
    """Bring a loaded model to ONNX, exporting TorchScript with the TorchScript exporter."""
    if model.format == "onnx":
        import onnx

        inferred = onnx.shape_inference.infer_shapes(model.module)
        outputs = [_value_spec(v, model.path) for v in inferred.graph.output]
        return OnnxModel(model.module, model.inputs, outputs, route="onnx -> relax")
    if model.format == "torch.export":
        from .exported import prepare_exported

        return prepare_exported(model)
    return _export_torchscript(model, opset)


def run_torchscript(module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Run a ScriptModule on numpy arrays; returns its outputs flattened to a list."""
    import torch

    with torch.no_grad():
        result = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    flat = list(result) if isinstance(result, list | tuple) else [result]
    if not all(isinstance(t, torch.Tensor) for t in flat):
        raise DeploytoolError("the model returns something other than tensors",
                              "Return a tensor or a tuple of tensors from forward()")
    return [t.detach().numpy() for t in flat]


def _export_torchscript(model: SourceModel, opset: int) -> OnnxModel:
    import onnx
    import torch

    from .dynamic import dynamic_axes, example_sizes

    arrays = sample_inputs(model.inputs, sizes=example_sizes(model.inputs))
    try:
        outputs = run_torchscript(model.module, arrays)
    except DeploytoolError:
        raise
    except Exception as err:
        raise DeploytoolError(
            f"the model rejected inputs {', '.join(map(str, model.inputs))} "
            f"({_last_line(err)})", "Pass the shapes the model expects with --input") from err
    names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    args = tuple(torch.from_numpy(a) for a in arrays)
    notes: list[str] = []

    def export(module) -> bytes:
        buffer = io.BytesIO()
        with warnings.catch_warnings(), _output_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,
                              input_names=[s.name for s in model.inputs], output_names=names,
                              dynamic_axes=dynamic_axes(model.inputs) or None)
        return buffer.getvalue()

    try:
        exported = export(model.module)
    except Exception as err:
        from .fallbacks import export_with_fallbacks

        exported = export_with_fallbacks(model.module, args, export, err, notes)
    output_specs = [TensorSpec(n, tuple(o.shape), str(o.dtype))
                    for n, o in zip(names, outputs, strict=True)]
    return OnnxModel(onnx.load_from_string(exported), model.inputs, output_specs, notes,
                     route="torchscript -> onnx -> relax")


@contextmanager
def _output_silenced():
    """Hide what C++ code prints (the ONNX exporter dumps whole graphs when it fails)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _last_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _load_exported(path: Path, inputs: list[TensorSpec] | None) -> SourceModel:
    from .exported import load_exported

    dynamic = [str(s) for s in inputs or [] if s.is_dynamic]
    if dynamic:
        raise DeploytoolError(
            f"symbolic dimensions ({', '.join(dynamic)}) are not supported for torch.export "
            f"archives like {path}", "Compile the TorchScript or ONNX form of the model for a "
            "dynamic batch, or give static shapes")
    return load_exported(path, inputs)


FRONTENDS: dict[str, Callable[[Path, list[TensorSpec] | None], SourceModel]] = {
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
    "torch.export": _load_exported,
}
# Model file suffix -> frontend; any other suffix is read as TorchScript.
SUFFIXES = {".onnx": "onnx", ".pt2": "torch.export"}
