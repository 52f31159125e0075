"""Our converters for ONNX operators TVM's Relax frontend lacks, as ONNX-to-ONNX rewrites."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import DeploytoolError


class ConverterError(DeploytoolError):
    """An operator has a converter, but not for the variant the model uses."""


@dataclass(frozen=True)
class Converter:
    """Rewrites one ONNX operator into operators TVM's frontend supports."""

    op_type: str
    summary: str
    rewrite: Callable[[Rewriter, object], None]


CONVERTERS: dict[str, Converter] = {}


def register(op_type: str, summary: str):
    """Register the decorated ``rewrite(rewriter, node)`` as the converter of ``op_type``."""

    def wrap(function):
        CONVERTERS[op_type] = Converter(op_type, summary, function)
        return function

    return wrap


@dataclass
class Rewriter:
    """Collects the nodes and constants that replace one node, with fresh unique names."""

    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple]
    prefix: str
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | None = None,
           **attrs) -> str:
        """Append a node; returns its (first) output name."""
        from onnx import helper

        outputs = outputs or [self.name(op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.name(op_type),
                                           **attrs))
        return outputs[0]

    def const(self, value, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def constant_of(self, name: str, node, what: str) -> np.ndarray:
        if name not in self.constants:
            raise ConverterError(
                f"deploytool's {node.op_type} converter needs constant {what} weights, but "
                f"'{name}' is computed in the graph (stage import)",
                "Export the model with its weights as initializers (torch.onnx.export does)")
        return self.constants[name]

    def static_shape(self, name: str, node) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None or any(not isinstance(d, int) for d in shape):
            raise ConverterError(
                f"deploytool's {node.op_type} converter needs a static input shape, but "
                f"'{name}' has shape {shape or 'unknown'} (stage import)",
                "Give every model input a fixed shape with --input NAME:SHAPE:DTYPE")
        return shape

    def slice(self, value: str, start: int, end: int, axis: int = -1) -> str:
        return self.op("Slice", [value, self.const(np.array([start], np.int64), "start"),
                                 self.const(np.array([end], np.int64), "end"),
                                 self.const(np.array([axis], np.int64), "axis")])

    def unsqueeze(self, value: str, axis: int) -> str:
        return self.op("Unsqueeze", [value, self.const(np.array([axis], np.int64), "axes")])


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _optional_input(node, index: int) -> str:
    return node.input[index] if len(node.input) > index and node.input[index] else ""


def _check_variant(node, attrs: dict, default_activations: list[str]) -> None:
    activations = [a.decode() if isinstance(a, bytes) else a
                   for a in attrs.get("activations", [])]
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    problems = []
    if direction not in ("forward", "reverse", "bidirectional"):
        problems.append(f"direction {direction}")
    else:
        expected = default_activations * len(_directions(attrs))
        if activations and [a.lower() for a in activations] != [a.lower() for a in expected]:
            problems.append(f"activations {activations}")
    if attrs.get("input_forget", 0):
        problems.append("input_forget=1")
    if _optional_input(node, 4):
        problems.append("sequence_lens")
    if problems:
        raise ConverterError(
            f"deploytool's {node.op_type} converter does not support {', '.join(problems)} "
            f"(node '{node.name}', stage import)",
            f"Use the default {node.op_type} form (PyTorch's nn.{node.op_type} exports it)")


def _directions(attrs: dict) -> list[bool]:
    """For each direction index, whether it runs backwards in time."""
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


def _recurrent_prologue(rw: Rewriter, node, attrs: dict, gates: int):
    """Shared start of LSTM and GRU: the sequence as [S, B, I] and per-direction weights."""
    shape = rw.static_shape(node.input[0], node)
    layout = attrs.get("layout", 0)
    x = node.input[0]
    if layout == 1:
        x = rw.op("Transpose", [x], perm=[1, 0, 2])
        shape = (shape[1], shape[0], shape[2])
    seq, batch, _ = shape
    hidden = int(attrs["hidden_size"])
    w = rw.constant_of(node.input[1], node, "W")
    r = rw.constant_of(node.input[2], node, "R")
    b_name = _optional_input(node, 3)
    b = (rw.constant_of(b_name, node, "B") if b_name
         else np.zeros((w.shape[0], 2 * gates * hidden), w.dtype))
    return x, seq, batch, hidden, layout, w, r, b


def _initial_state(rw: Rewriter, node, index: int, direction: int, batch: int, hidden: int,
                   dtype, layout: int) -> str:
    """Direction ``direction``'s initial state, [B, H]: layout 0 stores [D, B, H], 1 [B, D, H]."""
    name = _optional_input(node, index)
    if not name:
        return rw.const(np.zeros((batch, hidden), dtype), "zeros")
    return rw.op("Gather", [name, rw.const(np.array(direction, np.int64), "dir")],
                 axis=1 if layout == 1 else 0)


def _recurrent_epilogue(rw: Rewriter, node, layout: int, sequences: list[list[str]],
                        finals: list[list[str]]) -> None:
    """Concatenate per-direction results into the node's outputs (Y, Y_h[, Y_c])."""
    outputs = list(node.output)
    if outputs and outputs[0]:
        per_direction = [rw.unsqueeze(rw.op("Concat", [rw.unsqueeze(h, 0) for h in steps],
                                            axis=0), 1) for steps in sequences]
        y = rw.op("Concat", per_direction, axis=1)  # [S, D, B, H]
        if layout == 1:
            rw.op("Transpose", [y], [outputs[0]], perm=[2, 0, 1, 3])
        else:
            rw.op("Identity", [y], [outputs[0]])
    for k, states in enumerate(finals, start=1):
        if len(outputs) > k and outputs[k]:
            state = rw.op("Concat", [rw.unsqueeze(s, 0) for s in states], axis=0)  # [D, B, H]
            if layout == 1:
                rw.op("Transpose", [state], [outputs[k]], perm=[1, 0, 2])
            else:
                rw.op("Identity", [state], [outputs[k]])


@register("LSTM", "unrolled over the static sequence length with MatMul, Sigmoid and Tanh")
def rewrite_lstm(rw: Rewriter, node) -> None:
    """ONNX LSTM (gates i, o, f, c; optional peepholes) as one step per time index."""
    attrs = _attributes(node)
    _check_variant(node, attrs, ["Sigmoid", "Tanh", "Tanh"])
    x, seq, batch, hidden, layout, w, r, b = _recurrent_prologue(rw, node, attrs, 4)
    p_name = _optional_input(node, 7)
    peep = rw.constant_of(p_name, node, "P") if p_name else None
    clip = attrs.get("clip")
    sequences, final_h, final_c = [], [], []
    for d, backwards in enumerate(_directions(attrs)):
        xw = rw.op("Add", [rw.op("MatMul", [x, rw.const(w[d].T, "wT")]),
                           rw.const(b[d, :4 * hidden] + b[d, 4 * hidden:], "bias")])
        r_t = rw.const(r[d].T, "rT")
        h = _initial_state(rw, node, 5, d, batch, hidden, w.dtype, layout)
        c = _initial_state(rw, node, 6, d, batch, hidden, w.dtype, layout)
        steps = [""] * seq
        for t in (reversed(range(seq)) if backwards else range(seq)):
            gates = rw.op("Add", [rw.op("Gather", [xw, rw.const(np.array(t, np.int64), "t")],
                                        axis=0), rw.op("MatMul", [h, r_t])])
            if clip is not None:
                gates = rw.op("Clip", [gates, rw.const(np.array(-clip, w.dtype), "lo"),
                                       rw.const(np.array(clip, w.dtype), "hi")])
            i, o, f, g = (rw.slice(gates, k * hidden, (k + 1) * hidden) for k in range(4))
            if peep is not None:
                i = rw.op("Add", [i, rw.op("Mul", [c, rw.const(peep[d, :hidden], "pi")])])
                f = rw.op("Add", [f, rw.op("Mul", [c, rw.const(peep[d, 2 * hidden:], "pf")])])
            c = rw.op("Add", [rw.op("Mul", [rw.op("Sigmoid", [f]), c]),
                              rw.op("Mul", [rw.op("Sigmoid", [i]), rw.op("Tanh", [g])])])
            if peep is not None:
                o = rw.op("Add", [o, rw.op("Mul", [c, rw.const(peep[d, hidden:2 * hidden],
                                                               "po")])])
            h = rw.op("Mul", [rw.op("Sigmoid", [o]), rw.op("Tanh", [c])])
            steps[t] = h
        sequences.append(steps)
        final_h.append(h)
        final_c.append(c)
    _recurrent_epilogue(rw, node, layout, sequences, [final_h, final_c])


@register("GRU", "unrolled over the static sequence length with MatMul, Sigmoid and Tanh")
def rewrite_gru(rw: Rewriter, node) -> None:
    """ONNX GRU (gates z, r, h; both linear_before_reset forms) as one step per time index."""
    attrs = _attributes(node)
    _check_variant(node, attrs, ["Sigmoid", "Tanh"])
    x, seq, batch, hidden, layout, w, r, b = _recurrent_prologue(rw, node, attrs, 3)
    before_reset = bool(attrs.get("linear_before_reset", 0))
    clip = attrs.get("clip")
    sequences, finals = [], []
    for d, backwards in enumerate(_directions(attrs)):
        xw = rw.op("Add", [rw.op("MatMul", [x, rw.const(w[d].T, "wT")]),
                           rw.const(b[d, :3 * hidden], "wb")])
        rb = b[d, 3 * hidden:]
        h = _initial_state(rw, node, 5, d, batch, hidden, w.dtype, layout)
        steps = [""] * seq

        def clipped(value):
            if clip is None:
                return value
            return rw.op("Clip", [value, rw.const(np.array(-clip, w.dtype), "lo"),
                                  rw.const(np.array(clip, w.dtype), "hi")])

        for t in (reversed(range(seq)) if backwards else range(seq)):
            xt = rw.op("Gather", [xw, rw.const(np.array(t, np.int64), "t")], axis=0)
            xz, xr, xh = (rw.slice(xt, k * hidden, (k + 1) * hidden) for k in range(3))
            if before_reset:
                hr = rw.op("Add", [rw.op("MatMul", [h, rw.const(r[d].T, "rT")]),
                                   rw.const(rb, "rb")])
                hz, hr_, hh = (rw.slice(hr, k * hidden, (k + 1) * hidden) for k in range(3))
                z = rw.op("Sigmoid", [clipped(rw.op("Add", [xz, hz]))])
                reset = rw.op("Sigmoid", [clipped(rw.op("Add", [xr, hr_]))])
                n = rw.op("Tanh", [clipped(rw.op("Add", [xh, rw.op("Mul", [reset, hh])]))])
            else:
                hzr = rw.op("Add", [rw.op("MatMul", [h, rw.const(r[d, :2 * hidden].T, "rT")]),
                                    rw.const(rb[:2 * hidden], "rb")])
                z = rw.op("Sigmoid", [clipped(rw.op("Add", [xz, rw.slice(hzr, 0, hidden)]))])
                reset = rw.op("Sigmoid", [clipped(rw.op("Add", [
                    xr, rw.slice(hzr, hidden, 2 * hidden)]))])
                hh = rw.op("Add", [rw.op("MatMul", [rw.op("Mul", [reset, h]),
                                                    rw.const(r[d, 2 * hidden:].T, "rhT")]),
                                   rw.const(rb[2 * hidden:], "rbh")])
                n = rw.op("Tanh", [clipped(rw.op("Add", [xh, hh]))])
            h = rw.op("Add", [n, rw.op("Mul", [z, rw.op("Sub", [h, n])])])  # (1-z)*n + z*h
            steps[t] = h
        sequences.append(steps)
        finals.append(h)
    _recurrent_epilogue(rw, node, layout, sequences, [finals])


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _shapes(proto) -> dict[str, tuple]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                                   for d in dims)
    return shapes


def apply_converters(proto, op_types: set[str] | None = None):
    """Replace the nodes of ``op_types`` (None: every registered one) by their conversions.

    Parameters
    ----------
    proto : onnx.ModelProto
        The model; it is not modified.
    op_types : set of str, optional
        Operators to rewrite, each with a registered converter.

    Returns
    -------
    (onnx.ModelProto, list of str)
        The rewritten model and one note per operator type rewritten.
    """
    import onnx

    op_types = set(CONVERTERS) if op_types is None else op_types & set(CONVERTERS)
    if not any(n.op_type in op_types for n in proto.graph.node):
        return proto, []
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    constants, shapes = _constants(graph), _shapes(model)
    nodes, done = [], {}
    for index, node in enumerate(graph.node):
        if node.op_type not in op_types:
            nodes.append(node)
            continue
        rw = Rewriter(constants, shapes, prefix=f"dt_{node.op_type.lower()}{index}")
        CONVERTERS[node.op_type].rewrite(rw, node)
        nodes.extend(rw.nodes)
        graph.initializer.extend(rw.initializers)
        done[node.op_type] = done.get(node.op_type, 0) + 1
    del graph.node[:]
    graph.node.extend(nodes)
    notes = [f"converted {count} {op} node(s) with deploytool's converter "
             f"({CONVERTERS[op].summary})" for op, count in sorted(done.items())]
    return model, notes


def fix_empty_constant_of_shape(proto) -> tuple[object, int]:
    """Replace each ``ConstantOfShape`` whose shape input is empty (a scalar result) by a
    ``Constant`` scalar; returns the model (a copy when changed) and how many were replaced.

    TVM 0.27's converter broadcasts the one-element ``value`` to the empty shape and fails
    (``broadcast_to expects ... ndim 1 while the target shape has ndim 0``); Hugging Face models
    traced with torchscript=True export such nodes.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    targets = [n for n in graph.node if n.op_type == "ConstantOfShape"]
    if not targets:
        return proto, 0
    constants, shapes = _constants(graph), _shapes(proto)
    empty = {n.output[0] for n in targets
             if (n.input[0] in constants and constants[n.input[0]].size == 0)
             or shapes.get(n.input[0]) == (0,)}
    if not empty:
        return proto, 0
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    nodes = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.output[0] not in empty:
            nodes.append(node)
            continue
        attrs = _attributes(node)
        value = (numpy_helper.to_array(attrs["value"]) if "value" in attrs
                 else np.zeros(1, np.float32))
        nodes.append(helper.make_node(
            "Constant", [], [node.output[0]], name=f"{node.name or 'constant_of_shape'}_scalar",
            value=numpy_helper.from_array(value.reshape(()).copy())))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, len(empty)


# Rewrites of an ONNX model that avoid known bugs of TVM's ONNX import, by name; each returns
# (model, count) and leaves its argument unchanged.
ONNX_FIXES: dict[str, Callable] = {"empty-shape ConstantOfShape": fix_empty_constant_of_shape}


def apply_onnx_fixes(proto) -> tuple[object, list[str]]:
    """Apply :data:`ONNX_FIXES`; returns the model and one note per fix that changed it."""
    notes = []
    for name, fix in ONNX_FIXES.items():
        proto, count = fix(proto)
        if count:
            notes.append(f"applied ONNX fix '{name}' to {count} node(s)")
    return proto, notes


def fold_with_onnxruntime(proto):
    """The model after ONNX Runtime's basic graph optimizations (constant folding, redundant
    nodes removed; standard ONNX operators only): with static input shapes this folds the shape
    arithmetic that TVM's ONNX import cannot follow (a Reshape of a tensor whose shape it lost)."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="deploytool-fold-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = os.path.join(tmp, "folded.onnx")
        ort.InferenceSession(proto.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        folded = onnx.load(options.optimized_model_filepath)
    used = {n.domain for n in folded.graph.node}
    kept = [o for o in folded.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    return folded
