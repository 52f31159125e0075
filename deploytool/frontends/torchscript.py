"""The TorchScript frontend: load a .pt file, run it, export it with the TorchScript exporter."""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..common import last_line, sha256_of
from ..errors import DeploytoolError
from ..tensors import TensorSpec, parse_inputs_json, sample_inputs
from ..verify.references import named_outputs
from .custom_ops import unknown_operator, unknown_operator_error
from .dynamic import dynamic_axes, example_sizes
from .fallbacks import export_with_fallbacks
from .model import OnnxModel, SourceModel

SAVE_HINT = "Save it with torch.jit.save(torch.jit.script(model), path)"


def load_torchscript(path: Path, inputs: list[TensorSpec] | None) -> SourceModel:
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
        operator = unknown_operator(str(err))
        if operator:
            raise unknown_operator_error(path, operator) from err
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


def run_torchscript_named(module, arrays: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Run a ScriptModule on numpy arrays; returns its outputs flattened to named arrays (dict
    keys and NamedTuple fields name them, Nones are left out: see ``named_outputs``)."""
    import torch

    with torch.no_grad():
        result = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    return _named_arrays(result)


def _named_arrays(result) -> list[tuple[str, np.ndarray]]:
    import torch

    named = named_outputs(result)
    if not named or not all(isinstance(t, torch.Tensor) for _, t in named):
        raise DeploytoolError("the model returns something other than tensors",
                              "Return tensors from forward(): a tensor, or tuples, lists, "
                              "dicts or NamedTuples of tensors (Nones are left out)")
    return [(name, t.detach().cpu().numpy()) for name, t in named]


def run_torchscript(module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Run a ScriptModule on numpy arrays; returns its outputs flattened to a list."""
    return [array for _, array in run_torchscript_named(module, arrays)]


def is_flat_result(result) -> bool:
    """Whether a result is a tensor or a plain tuple of tensors, which the ONNX exporter takes
    as it is (anything else is flattened first: ``graph_rewrites.flatten_outputs``)."""
    import torch

    if isinstance(result, torch.Tensor):
        return True
    return (type(result) is tuple and bool(result)
            and all(isinstance(t, torch.Tensor) for t in result))


def export_torchscript(model: SourceModel, opset: int) -> OnnxModel:
    """Export a TorchScript model to ONNX with the TorchScript exporter (plain, or frozen and
    rewritten: see :mod:`.fallbacks`), naming the outputs after the model's result."""
    import onnx
    import torch

    # Integers 0 and 1 only: valid indices into any embedding table, whatever its size.
    arrays = sample_inputs(model.inputs, sizes=example_sizes(model.inputs), integers=2)
    args = tuple(torch.from_numpy(a) for a in arrays)
    try:
        with torch.no_grad():
            result = model.module(*args)
        outputs = _named_arrays(result)
    except DeploytoolError:
        raise
    except Exception as err:
        raise DeploytoolError(
            f"the model rejected inputs {', '.join(map(str, model.inputs))} "
            f"({last_line(err)})", "Pass the shapes the model expects with --input") from err
    names = [name for name, _ in outputs]
    notes: list[str] = []

    def export(module) -> bytes:
        buffer = io.BytesIO()
        with warnings.catch_warnings(), output_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,
                              input_names=[s.name for s in model.inputs], output_names=names,
                              dynamic_axes=dynamic_axes(model.inputs) or None)
        return buffer.getvalue()

    if is_flat_result(result):
        try:
            exported = export(model.module)
        except Exception as err:
            exported = export_with_fallbacks(model.module, args, export, err, notes)
    else:  # a dict, NamedTuple, nested tuple or None: only the frozen, rewritten graph exports
        exported = export_with_fallbacks(model.module, args, export, None, notes)
    output_specs = [TensorSpec(n, tuple(o.shape), str(o.dtype)) for n, o in outputs]
    return OnnxModel(onnx.load_from_string(exported), model.inputs, output_specs, notes,
                     route=ONNX_ROUTE)


ONNX_ROUTE = "torchscript -> onnx -> relax"


@contextmanager
def output_silenced():
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


# Operators whose output size depends on the input's values, not only its shape: detection
# post-processing (non-maximum suppression, score thresholds) and its kin.
DATA_DEPENDENT = ("torchvision::nms", "torchvision::qnms", "aten::nonzero", "aten::argwhere",
                  "aten::masked_select", "aten::_unique2", "aten::unique_dim",
                  "aten::unique_consecutive")


def data_dependent_operators(model: SourceModel) -> list[str]:
    """The :data:`DATA_DEPENDENT` operators a TorchScript model calls (in nested blocks too)."""
    if model.format != "torchscript":
        return []

    def kinds(block):
        for node in block.nodes():
            yield node.kind()
            for inner in node.blocks():
                yield from kinds(inner)

    called = set(kinds(model.module.inlined_graph))
    return [op for op in DATA_DEPENDENT if op in called]


@contextmanager
def data_dependence_explained(model: SourceModel):
    """Where exporting, importing or building fails on a model that calls a data-dependent
    operator, report that operator instead of the symptom a later stage met."""
    try:
        yield
    except DeploytoolError as err:
        operators = data_dependent_operators(model)
        if not operators:
            raise
        raise DeploytoolError(
            f"the model calls {', '.join(operators)}, whose output size depends on the input's "
            "values (detection post-processing such as NMS); packages have shapes fixed by their "
            f"input shapes (the compile failed with: {last_line(err.what, limit=160)})",
            "Compile the model without that part (return the raw boxes and scores, for example) "
            "and run it in the host program") from err
