"""Find the first layer where a package's numbers part from its reference's.

A package built from ONNX has its model.onnx cut after one operator at a time
(``onnx.utils.Extractor``), and each cut is imported and built exactly as the package was (same
target, same schedules and tuning database) and run beside ONNX Runtime on the same inputs. A
bisection over the operators in graph order finds the first whose output fails the validation
rule, in about log2(N) builds. A package built from a torch.export program is cut the same way
in its FX graph (see localize_exported.py) and compared with eager PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..build.cpu_pipeline import schedule_build
from ..build.library import compile_executable
from ..common import Log, last_line
from ..errors import DeploytoolError
from ..frontends.dynamic import example_sizes
from ..frontends.model import OnnxModel
from ..importer.relax import import_model
from ..package.manifest import Package
from ..targets import TargetSpec
from ..tensors import TensorSpec
from ..tuning.settings import TuneSettings
from .comparison import Comparison, compare
from .inputs import make_inputs
from .references import onnxruntime_session

# Operators whose outputs are shapes or indices, not a layer's activations.
SKIPPED = {"Constant", "Shape", "ConstantOfShape", "Range", "NonZero", "Size"}


@dataclass
class Localization:
    """The first operator whose output differs, with the comparison there."""

    node: str | None
    op: str | None
    tensor: str | None
    comparison: Comparison | None
    operators: int  # candidates in the graph
    builds: int  # cuts built to find it
    notes: list[str] = field(default_factory=list)
    reference: str = "ONNX Runtime"
    module: str | None = None  # a torch.export node's module path (nn_module_stack)
    weights: list[str] = field(default_factory=list)  # the parameters the node reads

    def format(self) -> str:
        if self.node is None:
            return (f"localize: every operator's output matches {self.reference} when built "
                    f"alone ({self.builds} builds of {self.operators} operators); the "
                    "difference comes from how the whole model is built (fusion across layers)")
        c = self.comparison
        return (f"localize: first differing layer: {self.op} node '{self.node}' "
                f"({self._where()}): scaled error {c.scaled_error:.3g} (bound {c.max_error:g}), "
                f"max abs {c.max_abs_error:.3g}, cosine {c.cosine:.6f} "
                f"({self.builds} builds, {self.operators} operators)")

    def _where(self) -> str:
        if self.module is None:
            return f"output '{self.tensor}'"
        weights = f", weights {', '.join(self.weights)}" if self.weights else ""
        return f"module '{self.module or '(top level)'}'{weights}"


def first_failing(count: int, compare_at: Callable[[int], Comparison]
                  ) -> tuple[int, Comparison] | None:
    """The smallest index in [0, count) whose comparison fails, by bisection (it assumes that
    once one fails, every later one does); None when the last passes."""
    low, high, found = 0, count - 1, None
    while low <= high:
        middle = (low + high) // 2
        comparison = compare_at(middle)
        if comparison.passed:
            low = middle + 1
        else:
            found, high = (middle, comparison), middle - 1
    return found


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
    candidates = _candidates(proto)
    arrays = validation_arrays(package, options)
    feeds = {s.name: a for s, a in zip(package.inputs, arrays, strict=True)}
    cut = _Cut(proto, package, target, feeds, options.max_error, log)
    found = first_failing(len(candidates), lambda i: cut.compare(*candidates[i]))
    if found is None:
        return Localization(None, None, None, None, len(candidates), cut.builds)
    node, tensor = candidates[found[0]]
    return Localization(node.name, node.op_type, tensor, found[1], len(candidates), cut.builds)


def _candidates(proto) -> list[tuple]:
    """(node, its first float output of known shape), in graph order."""
    known = {v.name: v for v in [*proto.graph.value_info, *proto.graph.output]}
    found = []
    for node in proto.graph.node:
        if node.op_type in SKIPPED or not node.output:
            continue
        value = known.get(node.output[0])
        if value is None or value.type.tensor_type.elem_type not in (1, 11):  # float, double
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            found.append((node, node.output[0]))
    return found


def validation_arrays(package: Package, options) -> list[np.ndarray]:
    """The first sample of the validation's inputs, at one size of any symbolic dimension."""
    ranges = {k: tuple(v) for k, v in package.manifest.get("input_ranges", {}).items()}
    return make_inputs(package.inputs, options.seed, options.ranges,
                       example_sizes(package.inputs), ranges)


def package_settings(package: Package) -> TuneSettings:
    """The tuning settings the package was compiled with (its tuning database)."""
    db = (package.manifest.get("compile_options") or {}).get("tuning", {}).get("db")
    return TuneSettings(db=Path(db) if db else None)


def build_and_run(mod, target: TargetSpec, settings: TuneSettings, arrays: list[np.ndarray],
                  what: str) -> list[np.ndarray]:
    """Build ``mod`` as a package is built and run it here on ``arrays``; its outputs."""
    import tvm
    from tvm import relax

    pipeline, _ = schedule_build(target, settings)
    try:
        executable = compile_executable(mod, target, pipeline)
    except DeploytoolError as err:
        raise DeploytoolError(f"--localize could not build the model cut after {what} "
                              f"({last_line(err)})", "Report it with the model") from err
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    return [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]


def package_target(package: Package) -> TargetSpec:
    entry = dict(package.manifest["target"])
    target = dict(entry["target"])
    if target.get("mcpu") == "native" and entry.get("resolved_cpu"):
        target["mcpu"] = entry["resolved_cpu"]
    spec = TargetSpec(entry["name"], target, entry["arch"], entry.get("cxx", "g++"))
    if not spec.runs_here():
        raise DeploytoolError(f"--localize runs the package's layers here, and this machine "
                              f"cannot run {spec.name} code", "Run it on a machine that can")
    return spec


class _Cut:
    """Builds the model cut after one tensor, and compares it with ONNX Runtime."""

    def __init__(self, proto, package: Package, target: TargetSpec, feeds: dict,
                 max_error: float, log: Log):
        self.proto, self.package, self.target = proto, package, target
        self.feeds, self.max_error, self.log = feeds, max_error, log
        self.builds = 0
        self.settings = package_settings(package)

    def compare(self, node, tensor: str) -> Comparison:
        import onnx

        names = [i.name for i in self.proto.graph.input if i.name in self.feeds]
        sub = onnx.utils.Extractor(self.proto).extract_model(names, [tensor])
        used = [i.name for i in sub.graph.input]
        feeds = {n: self.feeds[n] for n in used if n in self.feeds}
        expected = onnxruntime_session(_saved(sub)).run(None, feeds)[0]
        actual = self._run(sub, feeds, tensor, expected)
        self.builds += 1
        result = compare(tensor, "onnxruntime", actual, expected, max_error=self.max_error)
        self.log(f"  cut after {node.op_type} '{node.name}': scaled error "
                 f"{result.scaled_error:.3g} {'ok' if result.passed else 'DIFFERS'}")
        return result

    def _run(self, sub, feeds: dict, tensor: str, expected: np.ndarray) -> np.ndarray:
        specs = [TensorSpec(n, tuple(a.shape), str(a.dtype)) for n, a in feeds.items()]
        output = TensorSpec(tensor, tuple(expected.shape), str(expected.dtype))
        imported = import_model(OnnxModel(sub, specs, [output]))
        return build_and_run(imported.mod, self.target, self.settings, list(feeds.values()),
                             f"'{tensor}'")[0]


def _saved(proto) -> bytes:
    return proto.SerializeToString()
