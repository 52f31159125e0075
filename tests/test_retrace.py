"""The second TorchScript route: a re-trace with torch.export where ONNX fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deploytool.errors import DeploytoolError
from deploytool.frontends.exported import run_exported
from deploytool.frontends.load import load_model, other_route, to_onnx
from deploytool.frontends.retrace import RETRACE_ROUTE
from deploytool.frontends.torchscript import ONNX_ROUTE, run_torchscript
from deploytool.importer.relax import import_model
from deploytool.tensors import TensorSpec, sample_inputs
from deploytool.testing.examples import save_torchscript
from deploytool.testing.zoo import build_zoo_model, save_exported


def _matches_torchscript(source, graph, seed: int = 1) -> None:
    arrays = sample_inputs(source.inputs, seed=seed)
    for got, want in zip(run_exported(graph.program, arrays),
                         run_torchscript(source.module, arrays), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_scripted_transformer_encoder_is_re_traced(tmp_path):
    """Scripted nn.TransformerEncoder has no ONNX form (aten::is_autocast_enabled, then
    UNKNOWN_SCALAR); the re-trace takes it, names its input after forward() and notes why."""
    model, inputs = build_zoo_model("transformer")
    source = load_model(save_torchscript(model, inputs, tmp_path / "t.pt"))
    graph = to_onnx(source)
    assert graph.route == RETRACE_ROUTE
    assert [s.name for s in graph.inputs] == ["tokens"]
    assert "aten::is_autocast_enabled" in graph.notes[0]
    _matches_torchscript(source, graph)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def test_traced_attention_fast_path_is_decomposed(tmp_path):
    """Traced under no_grad, nn.MultiheadAttention records its fused kernel
    (aten::_native_multi_head_attention), which neither ONNX nor TVM has."""
    torch.manual_seed(0)
    path = save_torchscript(Attention().eval(), [TensorSpec("x", (1, 5, 16))], tmp_path / "a.pt",
                            trace=True)
    assert "_native_multi_head_attention" in str(torch.jit.load(str(path)).inlined_graph)
    source = load_model(path)
    graph = to_onnx(source)
    assert graph.route == RETRACE_ROUTE
    assert "_native_multi_head_attention" not in str(graph.program.graph)
    _matches_torchscript(source, graph)


def test_a_failed_re_trace_keeps_the_first_routes_error(tmp_path):
    model, inputs = build_zoo_model("dynamic_loop")
    source = load_model(save_torchscript(model, inputs, tmp_path / "loop.pt"))
    graph = to_onnx(source)
    assert graph.route == ONNX_ROUTE
    with pytest.raises(DeploytoolError) as failed:
        import_model(graph)
    with pytest.raises(DeploytoolError) as both:
        other_route(source, graph, failed.value)
    message = str(both.value)
    assert "operator(s) Loop" in message and "stage import" in message
    assert "re-tracing with torch.export failed too" in message and "data-dependent" in message
    assert "constant trip count" in message  # the first route's workaround


def test_exported_inputs_are_named_after_forward_parameters(tmp_path):
    model, inputs = build_zoo_model("two_io")
    source = load_model(save_exported(model, inputs, tmp_path / "two.pt2"))
    assert [s.name for s in source.inputs] == ["x", "side"]
    model, inputs = build_zoo_model("hf_bert")
    source = load_model(save_exported(model, inputs, tmp_path / "bert.pt2"))
    assert [s.name for s in source.inputs] == ["input_ids"]
