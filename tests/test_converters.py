"""deploytool's LSTM and GRU converters, checked against ONNX Runtime's own LSTM and GRU."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deploytool.importer.converters import CONVERTERS, ConverterError, apply_converters
from deploytool.importer.relax import tvm_missing_operators, unsupported_operators


def run(proto, feeds: dict) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def exported_rnn(cell: str, **kwargs):
    """A scripted nn.LSTM / nn.GRU exported by torch.onnx, and a sample input."""
    torch.manual_seed(0)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, cell)(5, 7, batch_first=True, **kwargs)

        def forward(self, x):
            y, state = self.rnn(x)
            return y, state

    x = torch.randn(2, 4, 5)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(Wrapper().eval()), (x,), buffer, dynamo=False,
                          opset_version=17, input_names=["x"])
    return onnx.load_from_string(buffer.getvalue()), {"x": x.numpy()}


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("kwargs", [{}, {"bidirectional": True}, {"num_layers": 2},
                                    {"num_layers": 2, "bidirectional": True}],
                         ids=["plain", "bidirectional", "2 layers", "2 layers bidirectional"])
def test_torch_exported_rnn_matches_onnx_runtime(cell, kwargs):
    proto, feeds = exported_rnn(cell, **kwargs)
    converted, notes = apply_converters(proto)
    onnx.checker.check_model(converted)
    ops = {n.op_type for n in converted.graph.node}
    assert cell not in ops and {"MatMul", "Sigmoid", "Tanh"} <= ops
    layers = kwargs.get("num_layers", 1)
    assert notes == [f"converted {layers} {cell} node(s) with deploytool's converter "
                     f"({CONVERTERS[cell].summary})"]
    assert_same(run(converted, feeds), run(proto, feeds))


def hand_built(op: str, attrs: dict, peepholes: bool = False, layout: int = 0, seed: int = 0):
    """An ONNX model of one LSTM/GRU node with initial states, and its inputs."""
    rng = np.random.default_rng(seed)
    seq, batch, features, hidden = 3, 2, 4, 5
    gates = 4 if op == "LSTM" else 3
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    weights = {"W": (dirs, gates * hidden, features), "R": (dirs, gates * hidden, hidden),
               "B": (dirs, 2 * gates * hidden)}
    if peepholes:
        weights["P"] = (dirs, 3 * hidden)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(np.float32), n)
             for n, s in weights.items()]
    x = rng.standard_normal((seq, batch, features)).astype(np.float32)
    h0 = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
    feeds = {"X": x, "h0": h0}
    inputs, outputs = ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"]
    if op == "LSTM":
        feeds["c0"] = h0 * 0.5
        inputs.append("c0")
        outputs.append("Y_c")
        if peepholes:
            inputs.append("P")
    if layout == 1:  # batch first: X [B, S, I], states [B, D, H]
        feeds = {k: v.transpose(1, 0, 2).copy() for k, v in feeds.items()}
    graph = helper.make_graph(
        [helper.make_node(op, inputs, outputs, hidden_size=hidden, layout=layout, **attrs)], "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), feeds


VARIANTS = [
    ("GRU", {"linear_before_reset": 0}, False),
    ("GRU", {"linear_before_reset": 1, "direction": "reverse"}, False),
    ("GRU", {"direction": "bidirectional"}, False),
    ("GRU", {"clip": 0.5}, False),
    ("LSTM", {}, True),
    ("LSTM", {"direction": "bidirectional"}, True),
    ("LSTM", {"direction": "reverse", "clip": 0.7}, False),
]


@pytest.mark.parametrize(("op", "attrs", "peepholes"), VARIANTS,
                         ids=[f"{o}-{a}-{'peep' if p else ''}" for o, a, p in VARIANTS])
def test_onnx_variants_match_onnx_runtime(op, attrs, peepholes):
    proto, feeds = hand_built(op, attrs, peepholes)
    converted, _ = apply_converters(proto)
    assert_same(run(converted, feeds), run(proto, feeds))


@pytest.mark.parametrize(("op", "attrs", "peepholes"), [VARIANTS[2], VARIANTS[5]])
def test_batch_first_layout_matches_the_sequence_first_model(op, attrs, peepholes):
    """ONNX Runtime has no layout=1 kernels: compare with the same weights in layout 0."""
    proto, feeds = hand_built(op, attrs, peepholes, layout=0)
    proto1, feeds1 = hand_built(op, attrs, peepholes, layout=1)
    got = run(apply_converters(proto1)[0], feeds1)
    want = run(proto, feeds)
    assert_same([got[0].transpose(1, 2, 0, 3)] + [s.transpose(1, 0, 2) for s in got[1:]], want)


@pytest.mark.parametrize(("attrs", "named"), [
    ({"input_forget": 1}, "input_forget=1"),
    ({"activations": ["Relu", "Tanh", "Tanh"]}, "activations"),
])
def test_unsupported_variant_is_named(attrs, named):
    proto, _ = hand_built("LSTM", attrs)
    with pytest.raises(ConverterError, match=named) as info:
        apply_converters(proto)
    assert "stage import" in str(info.value) and "nn.LSTM" in str(info.value)


def test_sequence_lens_is_refused():
    proto, _ = hand_built("GRU", {})
    node = proto.graph.node[0]
    node.input[4] = "lens"
    with pytest.raises(ConverterError, match="sequence_lens"):
        apply_converters(proto)


def test_computed_weights_are_refused():
    proto, _ = hand_built("GRU", {})
    identity = helper.make_node("Identity", ["W"], ["W2"])
    proto.graph.node.insert(0, identity)
    proto.graph.node[1].input[1] = "W2"
    with pytest.raises(ConverterError, match="constant W weights"):
        apply_converters(proto)


def test_unsupported_operators_takes_the_registry_into_account():
    proto, _ = exported_rnn("LSTM")
    assert "LSTM" in tvm_missing_operators(proto)
    assert unsupported_operators(proto) == []


def test_if_is_importable_and_rnn_is_not():
    then_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "b", [], [then_out])
    rnn_graph, _ = hand_built("GRU", {})
    node = rnn_graph.graph.node[0]
    rnn = helper.make_node("RNN", list(node.input)[:6], ["Y", "Y_h"], hidden_size=5)
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch), rnn],
        "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert unsupported_operators(helper.make_model(graph)) == ["RNN"]


def test_model_without_converted_operators_is_returned_unchanged():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    assert apply_converters(proto) == (proto, [])


def _constant_of_shape_model():
    """y = x * ConstantOfShape(Shape(x)[0:0]): a ConstantOfShape with an empty shape input."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "zero"], ["empty"]),
             helper.make_node("ConstantOfShape", ["empty"], ["two"],
                              value=numpy_helper.from_array(np.array([2.0], np.float32))),
             helper.make_node("Mul", ["x", "two"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array([0], np.int64), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_empty_shape_constant_of_shape_becomes_a_scalar():
    from tvm.relax.frontend.onnx import from_onnx

    from deploytool.importer.converters import apply_onnx_fixes

    model = _constant_of_shape_model()
    with pytest.raises(Exception, match="broadcast_to"):  # TVM's own converter
        from_onnx(model, shape_dict={"x": [2, 3]})
    fixed, notes = apply_onnx_fixes(model)
    assert notes == ["applied ONNX fix 'empty-shape ConstantOfShape' to 1 node(s)"]
    assert "ConstantOfShape" not in {n.op_type for n in fixed.graph.node}
    assert "ConstantOfShape" in {n.op_type for n in model.graph.node}  # argument unchanged
    from_onnx(fixed, shape_dict={"x": [2, 3]})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for proto in (model, fixed):
        session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], x * 2)


def test_onnxruntime_folding_keeps_standard_operators_and_results():
    from deploytool.importer.converters import fold_with_onnxruntime

    model = _constant_of_shape_model()
    folded = fold_with_onnxruntime(model)
    assert len(folded.graph.node) < len(model.graph.node)
    assert {o.domain for o in folded.opset_import} <= {"", "ai.onnx"}
    x = np.ones((2, 3), np.float32)
    session = onnxruntime.InferenceSession(folded.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x * 2)


class ChannelShuffle(nn.Module):
    """ShuffleNetV2's split and channel shuffle: slice bounds and view sizes computed from the
    input's shape, which TVM's ONNX import leaves as tensors of unknown shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat((a, self.conv(torch.cat((b, b), 1))[:, :2]), 1)
        n, c, h, w = y.size()
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_shapes_computed_in_the_graph_are_folded_before_import(tmp_path):
    from deploytool.frontends.load import load_model, to_onnx
    from deploytool.importer.relax import import_model, unknown_shapes
    from deploytool.tensors import TensorSpec
    from deploytool.testing.examples import save_torchscript

    torch.manual_seed(0)
    path = save_torchscript(ChannelShuffle(), [TensorSpec("x", (1, 4, 6, 6))], tmp_path / "s.pt")
    imported = import_model(to_onnx(load_model(path)))
    assert unknown_shapes(imported.mod) == 0
    assert any("unknown shape" in n and "constant folding by ONNX Runtime" in n
               for n in imported.notes)
