"""The second route for TorchScript: re-trace the ScriptModule with torch.export, skip ONNX."""

from __future__ import annotations

import keyword
import warnings

from ..common import last_line
from ..errors import DeploytoolError
from ..tensors import sample_inputs
from .exported import prepare_program
from .model import ExportedModel, SourceModel
from .torchscript import output_silenced

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


def _cause(err: Exception, limit: int = 200) -> str:
    """The line of a torch.export error that names the cause: an ``...Error:`` line (the
    TorchScript interpreter wraps the cause in a traceback), else its first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line]
    line = (named or lines or [type(err).__name__])[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def retrace_torchscript(model: SourceModel, failure: DeploytoolError) -> ExportedModel:
    """Re-trace a loaded TorchScript model with ``torch.export`` (non-strict), as a second route
    where TorchScript -> ONNX -> Relax fails.

    Non-strict export runs the TorchScript interpreter on fake tensors and records the aten
    operators it dispatches, so it needs no ONNX form of any operator; data-dependent branches are
    specialised to the sample inputs, as tracing does.

    Parameters
    ----------
    model : SourceModel
        A TorchScript model with static input shapes.
    failure : DeploytoolError
        Why the first route failed: kept in the notes, and raised (with a line on the re-trace)
        when the re-trace fails too.

    Returns
    -------
    ExportedModel
        The decomposed program, its route ``torchscript -> torch.export -> relax``.
    """
    import torch

    dynamic = [str(s) for s in model.inputs if s.is_dynamic]
    if dynamic:
        raise DeploytoolError(f"{failure.what} (no re-trace with torch.export: it needs static "
                              f"shapes, and {', '.join(dynamic)} has symbolic dimensions)",
                              failure.fix) from failure
    names = [s.name for s in model.inputs]
    if not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        names = [f"input{i}" for i in range(len(names))]
    args = tuple(torch.from_numpy(a) for a in sample_inputs(model.inputs))
    try:
        with warnings.catch_warnings(), output_silenced():
            warnings.simplefilter("ignore")
            program = torch.export.export(_caller(model.module.eval(), names), args,
                                          strict=False)
    except Exception as err:
        raise DeploytoolError(f"{failure.what} (re-tracing with torch.export failed too: "
                              f"{_cause(err)})", failure.fix) from err
    reason = last_line(str(failure), limit=300)
    graph = prepare_program(program, model.inputs, [f"compiled by re-tracing with torch.export: "
                                                    f"the ONNX route failed ({reason})"],
                            RETRACE_ROUTE)
    graph.replaces = failure
    return graph
