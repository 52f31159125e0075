"""Structured TorchScript outputs (dicts, NamedTuples, nested tuples, Nones) through ONNX."""
# (no "from __future__ import annotations": TorchScript reads the NamedTuple annotations)


from typing import NamedTuple

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from deploytool.frontends.graph_rewrites import rewrite_for_export
from deploytool.frontends.load import load_model
from deploytool.frontends.torchscript import export_torchscript, run_torchscript
from deploytool.tensors import TensorSpec, sample_inputs
from deploytool.testing.examples import save_torchscript


class Outputs(NamedTuple):
    logits: torch.Tensor
    aux: torch.Tensor | None


class DictOut(nn.Module):
    """A dict built step by step and read back (as torchvision's IntermediateLayerGetter does)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        features: dict[str, torch.Tensor] = {}
        features["feat"] = torch.relu(self.linear(x))
        result: dict[str, torch.Tensor] = {}
        result["out"] = features["feat"] * 2.0
        result["aux"] = x - 1.0
        return result


class NamedOut(nn.Module):
    def forward(self, x):
        return Outputs(x + 1.0, None)


class NestedOut(nn.Module):
    def forward(self, x):
        return x * 2.0, (x * 3.0, x + 4.0)


CASES = [(DictOut, ["out", "aux"]), (NamedOut, ["logits"]),
         (NestedOut, ["output0", "output1_0", "output1_1"])]


@pytest.mark.parametrize(("cls", "names"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_structured_outputs_export_as_named_onnx_outputs(cls, names, tmp_path):
    torch.manual_seed(0)
    path = save_torchscript(cls(), [TensorSpec("x", (2, 4))], tmp_path / "m.pt")
    source = load_model(path)
    onnx_model = export_torchscript(source, 17)
    assert [s.name for s in onnx_model.outputs] == names
    assert [o.name for o in onnx_model.proto.graph.output] == names
    assert any("rewriting the graph" in note for note in onnx_model.notes)
    arrays = sample_inputs(source.inputs, seed=1)
    session = onnxruntime.InferenceSession(onnx_model.proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": arrays[0]})
    for g, w in zip(got, run_torchscript(source.module, arrays), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_intermediate_dicts_are_replaced_by_their_values():
    frozen = torch.jit.freeze(torch.jit.script(DictOut()).eval())
    done = rewrite_for_export(frozen.graph)
    kinds = {node.kind() for node in frozen.graph.nodes()}
    assert not kinds & {"aten::dict", "aten::_set_item", "aten::__getitem__"}
    assert done["dicts with constant keys replaced by their values"] == 2
    x = torch.randn(2, 4)
    out, aux = frozen(x)
    assert out.shape == (2, 4) and torch.allclose(aux, x - 1.0)
