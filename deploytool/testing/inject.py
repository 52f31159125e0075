"""Deliberate miscompiles, for tests of validation: one layer's weights changed in the build only.

Each fault rewrites the ONNX graph that the importer receives (after the package's model.onnx is
written, so ONNX Runtime and TorchScript still compute the right numbers), for one named node.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from ..frontends.model import OnnxModel


def _weight(proto, node_name: str, index: int):
    node = next((n for n in proto.graph.node if n.name == node_name), None)
    if node is None or len(node.input) <= index:
        return None, None
    init = next((i for i in proto.graph.initializer if i.name == node.input[index]), None)
    return node, init


def _rewrite(init, array: np.ndarray) -> None:
    from onnx import numpy_helper

    init.CopyFrom(numpy_helper.from_array(array.astype(numpy_helper.to_array(init).dtype),
                                          init.name))


def scale_weight(factor: float) -> Callable:
    """Multiply the node's weight (input 1) by ``factor``."""
    def fault(proto, node_name):
        from onnx import numpy_helper

        _, init = _weight(proto, node_name, 1)
        if init is not None:
            _rewrite(init, numpy_helper.to_array(init) * factor)
    return fault


def drop_bias(proto, node_name) -> None:
    """Set the node's bias (input 2 of Conv or Gemm) to zero."""
    from onnx import numpy_helper

    _, init = _weight(proto, node_name, 2)
    if init is not None:
        _rewrite(init, np.zeros_like(numpy_helper.to_array(init)))


def transpose_kernel(proto, node_name) -> None:
    """Transpose the node's weight: a convolution kernel's rows and columns (a 1x1 kernel's
    input and output channels, or its input channels reversed), a matrix's two axes."""
    from onnx import numpy_helper

    _, init = _weight(proto, node_name, 1)
    if init is None:
        return
    w = numpy_helper.to_array(init)
    if w.ndim == 4 and w.shape[2] * w.shape[3] > 1:
        w = np.swapaxes(w, 2, 3) if w.shape[2] == w.shape[3] else w[:, :, ::-1, ::-1]
    elif w.shape[0] == w.shape[1]:
        w = np.swapaxes(w, 0, 1)
    else:
        w = np.flip(w, axis=1)
    _rewrite(init, np.ascontiguousarray(w))


@contextmanager
def injected(monkeypatch, fault: Callable, node_name: str) -> Iterator[None]:
    """Apply ``fault`` to ``node_name`` in every import that compile and localize make."""
    from .. import compiler
    from ..importer import relax as importer
    from ..verify import localize

    original = importer.import_model

    def faulty_import(model):
        if isinstance(model, OnnxModel):
            proto = copy.deepcopy(model.proto)
            fault(proto, node_name)
            model = replace(model, proto=proto)
        return original(model)

    for module in (importer, localize, compiler):
        monkeypatch.setattr(module, "import_model", faulty_import)
    yield
