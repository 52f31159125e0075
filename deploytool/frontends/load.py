"""Load any model file with the frontend its suffix names, and bring it to ONNX (or Relax)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DeploytoolError
from ..tensors import TensorSpec, check_memory
from .exported import load_exported, prepare_exported
from .model import GraphModel, SourceModel
from .onnx import load_onnx, prepare_onnx
from .torchscript import export_torchscript, load_torchscript


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
    if inputs is not None:
        check_memory(inputs)  # before any frontend allocates example data
    loader = FRONTENDS[SUFFIXES.get(path.suffix, "torchscript")]
    source = loader(path, inputs)
    check_memory(source.inputs)  # the shapes the model file carries
    return source


def to_onnx(model: SourceModel, opset: int = 17) -> GraphModel:
    """Bring a loaded model to ONNX (TorchScript through the TorchScript exporter); a
    torch.export program keeps its program and skips ONNX."""
    if model.format == "onnx":
        return prepare_onnx(model)
    if model.format == "torch.export":
        return prepare_exported(model)
    return export_torchscript(model, opset)


def _load_exported(path: Path, inputs: list[TensorSpec] | None) -> SourceModel:
    dynamic = [str(s) for s in inputs or [] if s.is_dynamic]
    if dynamic:
        raise DeploytoolError(
            f"symbolic dimensions ({', '.join(dynamic)}) are not supported for torch.export "
            f"archives like {path}", "Compile the TorchScript or ONNX form of the model for a "
            "dynamic batch, or give static shapes")
    return load_exported(path, inputs)


FRONTENDS: dict[str, Callable[[Path, list[TensorSpec] | None], SourceModel]] = {
    "torchscript": load_torchscript,
    "onnx": load_onnx,
    "torch.export": _load_exported,
}
# Model file suffix -> frontend; any other suffix is read as TorchScript.
SUFFIXES = {".onnx": "onnx", ".pt2": "torch.export"}
