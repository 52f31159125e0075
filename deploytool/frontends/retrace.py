"""The second route for TorchScript: re-trace the ScriptModule with torch.export, skip ONNX."""

from __future__ import annotations

import keyword
import warnings

from ..common import last_line
from ..errors import DeploytoolError
from ..tensors import sample_inputs
from .exported import prepare_program
from .model import ExportedModel, SourceModel

RETRACE_ROUTE = "torchscript -> torch.export -> relax"


def _caller(module, names: list[str]):
    """An nn.Module whose ``forward(<names>)`` calls ``module``; the ScriptModule is held outside
    the module tree, so torch.export lifts its weights as constants (registered, they would be
    plain tensors where torch.export expects Parameters)."""
    import torch

    params = ", ".join(names)
    scope: dict = {}
    exec(f"def forward(self, {params}):\n    return self.call[0]({params})\n", scope)  # noqa: S102

    class Caller(torch.nn.Module):
        forward = scope["forward"]

        def __init__(self):
            super().__init__()
            self.call = [module]

    return Caller()


def retrace_torchscript(model: SourceModel, reason: str) -> ExportedModel:
    """Re-trace a loaded TorchScript model with ``torch.export`` (non-strict), as a second route
    where TorchScript -> ONNX -> Relax fails.

    Non-strict export runs the TorchScript interpreter on fake tensors and records the aten
    operators it dispatches, so it needs no ONNX form of any operator; data-dependent branches are
    specialised to the sample inputs, as tracing does.

    Parameters
    ----------
    model : SourceModel
        A TorchScript model with static input shapes.
    reason : str
        Why the first route failed, kept in the notes.

    Returns
    -------
    ExportedModel
        The decomposed program, its route ``torchscript -> torch.export -> relax``.
    """
    import torch

    dynamic = [str(s) for s in model.inputs if s.is_dynamic]
    if dynamic:
        raise DeploytoolError(
            f"re-tracing with torch.export needs static shapes, and {', '.join(dynamic)} has "
            f"symbolic dimensions (stage export; the ONNX route failed: {reason})",
            "Give static shapes with --input, or fix what made the ONNX route fail")
    names = [s.name for s in model.inputs]
    if not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        names = [f"input{i}" for i in range(len(names))]
    args = tuple(torch.from_numpy(a) for a in sample_inputs(model.inputs))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(_caller(model.module.eval(), names), args,
                                          strict=False)
    except Exception as err:
        raise DeploytoolError(
            "re-tracing the TorchScript model with torch.export failed "
            f"({last_line(err, limit=300)}) (stage export; the ONNX route failed first: {reason})",
            "Save the model with torch.export.save(torch.export.export(model, args), "
            "'model.pt2') from its Python code and compile the .pt2") from err
    return prepare_program(program, model.inputs, [f"compiled by re-tracing with torch.export: "
                                                   f"the ONNX route failed ({reason})"],
                           RETRACE_ROUTE)
