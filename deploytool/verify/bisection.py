"""What both routes of ``validate --localize`` share: the report, the bisection, and building
a cut of the model as its package was built (see localize.py and localize_exported.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..build.cpu_pipeline import schedule_build
from ..build.library import compile_executable
from ..common import last_line
from ..errors import DeploytoolError
from ..frontends.dynamic import example_sizes
from ..package.manifest import Package
from ..targets import TargetSpec
from ..tuning.settings import TuneSettings
from .comparison import Comparison
from .inputs import make_inputs


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
