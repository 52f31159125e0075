"""Find the first layer where a package's numbers part from its reference's.

A package built from ONNX has its model.onnx cut after one operator at a time
(``onnx.utils.Extractor``), and each cut is imported and built exactly as the package was (same
target, same schedules and tuning database) and run beside ONNX Runtime on the same inputs. A
cut outputs every tensor still live after its operator (computed up to there and read later),
not only that operator's: a wrong layer on a parallel branch (an Inception block's other
towers, a residual's shortcut) then shows in every later cut, and a bisection over the
operators in graph order finds the first whose output fails the validation rule, in about
log2(N) builds. A package built from a torch.export program is cut the same way
in its FX graph (see localize_exported.py) and compared with eager PyTorch.
"""

from __future__ import annotations

import numpy as np

from ..common import Log
from ..frontends.model import OnnxModel
from ..importer.relax import import_model
from ..package.manifest import Package
from ..targets import TargetSpec
from ..tensors import TensorSpec
from .bisection import (
    Localization,
    build_and_run,
    first_failing,
    package_settings,
    package_target,
    validation_arrays,
)
from .comparison import Comparison, compare
from .references import onnxruntime_session

# Operators whose outputs are shapes or indices, not a layer's activations.
SKIPPED = {"Constant", "Shape", "ConstantOfShape", "Range", "NonZero", "Size"}


def localize_package(package: Package, options, log: Log | None = None) -> Localization:
    """Bisect the package's model.onnx (or, without one, its torch.export program) for the
    first operator whose output differs.

    Parameters
    ----------
    package : Package
        A CPU package.
    options : ValidationOptions
        The seed, ranges and bounds of the validation that failed.
    log : callable, optional
        Receives one line per build.
    """
    import onnx

    log = log or (lambda _line: None)
    path = package.path / "model.onnx"
    if not path.is_file():  # built from a torch.export program (a .pt2, or a re-traced .pt)
        from .localize_exported import localize_exported

        return localize_exported(package, options, log)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    target = package_target(package)
    arrays = validation_arrays(package, options)
    feeds = {s.name: a for s, a in zip(package.inputs, arrays, strict=True)}
    floats = _float_tensors(proto, feeds)
    _declare(proto, floats)
    candidates = _candidates(proto, set(floats))
    cut = _Cut(proto, package, target, feeds, floats, options.max_error, log)
    found = first_failing(len(candidates), lambda i: cut.compare(*candidates[i]))
    if found is None:
        return Localization(None, None, None, None, len(candidates), cut.builds)
    node, tensor, _ = candidates[found[0]]
    return Localization(node.name, node.op_type, tensor, found[1], len(candidates), cut.builds)


def _float_tensors(proto, feeds: dict) -> dict[str, np.ndarray]:
    """The float tensors ONNX Runtime computes from ``feeds``, every node output made a graph
    output: ONNX's shape inference leaves many of a traced transformer's without a shape (a
    Reshape to a computed shape), and a layer whose output is not a candidate cannot be named."""
    import copy

    import onnx

    marked = copy.deepcopy(proto)
    declared = {o.name for o in marked.graph.output}
    names = [name for node in marked.graph.node for name in node.output
             if name and name not in declared]
    marked.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    session = onnxruntime_session(_saved(marked))
    wanted = [o.name for o in session.get_outputs()]
    used = {i.name for i in session.get_inputs()}
    values = session.run(None, {n: a for n, a in feeds.items() if n in used})
    return {name: value for name, value in zip(wanted, values, strict=True)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f"}


def _declare(proto, floats: dict[str, np.ndarray]) -> None:
    """Give each of the ``floats`` its shape in ``proto``'s value_info, as ONNX Runtime computed
    it (the extractor cuts only at tensors with one)."""
    from onnx import helper

    declared = {v.name for v in [*proto.graph.value_info, *proto.graph.output]}
    for name, value in floats.items():
        if name in declared:
            continue
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        proto.graph.value_info.append(helper.make_tensor_value_info(name, elem, value.shape))


def _candidates(proto, floats: set[str]) -> list[tuple]:
    """(node, its first output, the tensors a cut after it outputs), in graph order, for the
    nodes whose first output is one of the ``floats``. A cut outputs that tensor and every
    other one computed before it and read after it (or a graph output)."""
    outputs = {o.name for o in proto.graph.output}
    nodes = list(proto.graph.node)
    last_read = {name: len(nodes) for name in outputs}
    for i, node in enumerate(nodes):
        for name in node.input:
            last_read[name] = max(last_read.get(name, i), i)

    found, computed = [], []
    for i, node in enumerate(nodes):
        computed += [name for name in node.output if name in floats]
        if node.op_type in SKIPPED or not node.output or node.output[0] not in floats:
            continue
        live = [name for name in computed
                if name == node.output[0] or last_read.get(name, -1) > i]
        found.append((node, node.output[0], live))
    return found


class _Cut:
    """Builds the model cut after one tensor, and compares it with ONNX Runtime's values of the
    whole model (``floats``, see :func:`_float_tensors`)."""

    def __init__(self, proto, package: Package, target: TargetSpec, feeds: dict,
                 floats: dict[str, np.ndarray], max_error: float, log: Log):
        self.proto, self.package, self.target = proto, package, target
        self.feeds, self.floats = feeds, floats
        self.max_error, self.log = max_error, log
        self.builds = 0
        self.settings = package_settings(package)

    def compare(self, node, tensor: str, live: list[str]) -> Comparison:
        """The cut after ``node``, every ``live`` tensor compared: the failing comparison of
        ``tensor`` (the node's own output) or else the worst of the others."""
        import onnx

        names = [i.name for i in self.proto.graph.input if i.name in self.feeds]
        sub = onnx.utils.Extractor(self.proto).extract_model(names, live)
        used = [i.name for i in sub.graph.input]
        feeds = {n: self.feeds[n] for n in used if n in self.feeds}
        expected = [self.floats[name] for name in live]
        actual = self._run(sub, feeds, tensor, live, expected)
        self.builds += 1
        results = {name: compare(name, "onnxruntime", a, e, max_error=self.max_error)
                   for name, a, e in zip(live, actual, expected, strict=True)}
        own = results[tensor]
        result = own if not own.passed else max(results.values(),
                                                 key=lambda c: (not c.passed, c.scaled_error))
        self.log(f"  cut after {node.op_type} '{node.name}' ({len(live)} live tensor"
                 f"{'s' if len(live) > 1 else ''}): scaled error {result.scaled_error:.3g} "
                 f"{'ok' if result.passed else 'DIFFERS'}")
        return result

    def _run(self, sub, feeds: dict, tensor: str, live: list[str], expected: list
             ) -> list[np.ndarray]:
        specs = [TensorSpec(n, tuple(a.shape), str(a.dtype)) for n, a in feeds.items()]
        outputs = [TensorSpec(name, tuple(e.shape), str(e.dtype))
                   for name, e in zip(live, expected, strict=True)]
        imported = import_model(OnnxModel(sub, specs, outputs))
        return build_and_run(imported.mod, self.target, self.settings, list(feeds.values()),
                             f"'{tensor}'")


def _saved(proto) -> bytes:
    return proto.SerializeToString()
