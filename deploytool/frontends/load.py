"""Load any model file with the frontend its suffix names, and bring it to ONNX (or Relax)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DeploytoolError
from ..tensors import TensorSpec, check_memory
from .exported import load_exported, prepare_exported
from .model import GraphModel, SourceModel
from .onnx import load_onnx, prepare_onnx
from .retrace import retrace_torchscript
from .torchscript import ONNX_ROUTE, export_torchscript, load_torchscript


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
    """Bring a loaded model to the graph the importer takes: ONNX for an ONNX file, the program
    for a torch.export archive, and for TorchScript the first route that exports (see
    :func:`other_route`): TorchScript -> ONNX, else a re-trace with torch.export."""
    if model.format == "onnx":
        return prepare_onnx(model)
    if model.format == "torch.export":
        return prepare_exported(model)
    try:
        return export_torchscript(model, opset)
    except DeploytoolError as err:
        return retrace_torchscript(model, err)


def other_route(model: SourceModel, graph: GraphModel, failure: DeploytoolError) -> GraphModel:
    """The next route for ``model`` after ``graph``'s route failed (at import or build) with
    ``failure``; raises ``failure`` when there is none.

    TorchScript models have two routes: TorchScript -> ONNX -> Relax (checked against ONNX
    Runtime too), and a re-trace with torch.export -> Relax, for graphs the ONNX exporter or
    TVM's ONNX import cannot take.
    """
    if model.format != "torchscript" or graph.route != ONNX_ROUTE:
        raise failure
    return retrace_torchscript(model, failure)


def route_failure(graph: GraphModel, failure: DeploytoolError) -> DeploytoolError:
    """The error to report when ``graph``'s route fails with ``failure``: on a second route, the
    first route's error and workaround, with the second's failure appended."""
    first = getattr(graph, "replaces", None)
    if first is None:
        return failure
    return DeploytoolError(f"{first.what} (re-traced with torch.export instead, which failed "
                           f"too: {failure.what})", first.fix)


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
