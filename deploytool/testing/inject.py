"""Deliberate miscompiles, for tests of validation: one layer's weights changed in the build only.

Each fault rewrites the graph that the importer receives, for one named layer, after the
references are fixed: in an ONNX graph (the package's model.onnx is already written, so ONNX
Runtime and TorchScript still compute the right numbers) the initializer of a named node; in a
torch.export program (the reference is the program file itself) the parameter of a named module,
swapped in for the import and put back after it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from ..frontends.model import ExportedModel, OnnxModel


def transposed(w: np.ndarray) -> np.ndarray:
    """A kernel's rows and columns swapped (a 1x1 kernel: input channels reversed), a square
    matrix's two axes swapped, another matrix's columns reversed."""
    if w.ndim == 4 and w.shape[2] * w.shape[3] > 1:
        w = np.swapaxes(w, 2, 3) if w.shape[2] == w.shape[3] else w[:, :, ::-1, ::-1]
    elif w.ndim >= 2 and w.shape[0] == w.shape[1]:
        w = np.swapaxes(w, 0, 1)
    else:
        w = np.flip(w, axis=1)
    return np.ascontiguousarray(w)


@dataclass(frozen=True)
class Fault:
    """A change to one tensor of a layer: its ``weight`` (ONNX input 1) or ``bias`` (input 2).

    Called as ``fault(proto, node_name)`` it rewrites an ONNX graph in place;
    :meth:`swapped` changes a torch.export program's parameter ``<module>.<tensor>``.
    """

    change: Callable[[np.ndarray], np.ndarray]
    tensor: str = "weight"

    def __call__(self, proto, node_name: str) -> None:
        from onnx import numpy_helper

        init = _onnx_initializer(proto, node_name, 1 if self.tensor == "weight" else 2)
        if init is not None:
            before = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(self.change(before).astype(before.dtype),
                                                  init.name))

    @contextmanager
    def swapped(self, program, module: str) -> Iterator[None]:
        """``program`` with its ``<module>.<tensor>`` changed for the block (no change when the
        program has no such parameter, as a cut before the layer has not)."""
        import torch

        name = f"{module}.{self.tensor}" if module else self.tensor
        table = next((t for t in (program.state_dict, program.constants) if name in t), None)
        if table is None:
            yield
            return
        original = table[name]
        changed = torch.from_numpy(self.change(original.detach().numpy().copy()))
        table[name] = (torch.nn.Parameter(changed, requires_grad=False)
                       if isinstance(original, torch.nn.Parameter) else changed)
        try:
            yield
        finally:
            table[name] = original


def scale_weight(factor: float) -> Fault:
    """Multiply the layer's weight by ``factor``."""
    return Fault(lambda w: w * factor)


drop_bias = Fault(np.zeros_like, "bias")  # set the layer's bias to zero
transpose_kernel = Fault(transposed)  # transpose the layer's weight (see transposed)


def _onnx_initializer(proto, node_name: str, index: int):
    node = next((n for n in proto.graph.node if n.name == node_name), None)
    if node is None or len(node.input) <= index:
        return None
    return next((i for i in proto.graph.initializer if i.name == node.input[index]), None)


@contextmanager
def injected(monkeypatch, fault: Fault, layer: str) -> Iterator[None]:
    """Apply ``fault`` to ``layer`` in every import that compile and localize make: an ONNX
    node's name, or a torch.export program's module path (``features.3``)."""
    from .. import compiler
    from ..importer import relax as importer
    from ..verify import localize, localize_exported

    original = importer.import_model

    def faulty_import(model):
        if isinstance(model, ExportedModel):
            with fault.swapped(model.program, layer):
                return original(model)
        if isinstance(model, OnnxModel):
            proto = copy.deepcopy(model.proto)
            fault(proto, layer)
            model = replace(model, proto=proto)
        return original(model)

    for module in (importer, localize, localize_exported, compiler):
        monkeypatch.setattr(module, "import_model", faulty_import)
    yield
