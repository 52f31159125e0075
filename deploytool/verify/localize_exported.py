"""Find the first layer where a package built from a torch.export program parts from PyTorch.

The program the package was built from (decomposed and fixed as compile does) is unlifted to an
FX graph module, and cut after one node: the cut returns every value computed so far that a later
node still needs (so a fault on any branch shows in it), is exported again with torch.export,
imported and built exactly as the package was (same target, schedules and tuning database), and
compared with the same cut run eagerly in PyTorch. A bisection over the compute nodes in graph
order (views, reshapes and nodes that depend on no input left out) finds the first whose value
fails the validation rule, in about log2(N) builds.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import DeploytoolError
from ..frontends.model import ExportedModel
from ..importer.relax import import_model
from ..package.manifest import Package
from .bisection import (
    Localization,
    build_and_run,
    first_failing,
    package_settings,
    package_target,
    validation_arrays,
)
from .comparison import Comparison, compare
from .references import compiled_model_file

# aten operators that only move, view or copy data, or make new tensors: not a layer.
MOVES = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "squeeze",
         "unsqueeze", "select", "slice", "clone", "alias", "detach", "contiguous", "flatten",
         "unflatten", "as_strided", "split", "split_with_sizes", "unbind", "chunk",
         "lift_fresh_copy", "_to_copy", "view_copy", "expand_copy", "permute_copy",
         "slice_copy", "select_copy", "squeeze_copy", "unsqueeze_copy", "t_copy",
         # tensors that take only their input's shape
         "full_like", "zeros_like", "ones_like", "empty_like", "new_zeros", "new_ones"}


def localize_exported(package: Package, options, log) -> Localization:
    """Bisect the package's torch.export program for the first node whose value differs.

    Parameters
    ----------
    package : Package
        A CPU package compiled from a ``.pt2`` (or re-traced from a ``.pt``) with torch.export.
    options : ValidationOptions
        The seed, ranges and bounds of the validation that failed (``model``: the model file,
        when it is no longer where the package was compiled from).
    log : callable
        Receives one line per build.
    """
    import torch

    program = _source_program(package, options)
    module = program.program.module()
    graph = _Graph(module.graph)
    target = package_target(package)
    arrays = validation_arrays(package, options)
    cut = _Cut(module, graph, package, target, arrays, options.max_error, log)
    with torch.no_grad():
        found = first_failing(len(graph.candidates), cut.compare)
    if found is None:
        return Localization(None, None, None, None, len(graph.candidates), cut.builds,
                            reference="PyTorch")
    node = graph.reported(graph.candidates[found[0]])
    return Localization(node.name, op_name(node), None, found[1], len(graph.candidates),
                        cut.builds, reference="PyTorch", module=module_path(node),
                        weights=graph.weights(node))


def _source_program(package: Package, options) -> ExportedModel:
    """The package's program as compile imported it: a .pt2 decomposed and fixed, or a .pt
    re-traced with torch.export."""
    from ..frontends.load import load_model, to_onnx
    from ..frontends.retrace import retrace_torchscript

    fmt = package.manifest["model"]["format"]
    path = options.model or compiled_model_file(package, fmt)
    if fmt not in ("torch.export", "torchscript") or path is None:
        raise DeploytoolError(
            f"--localize needs the model {package.path} was compiled from, and it is not at "
            f"{package.manifest['compile_options']['model']} (or it changed)",
            "Pass the model file with --model")
    source = load_model(path, None if fmt == "torch.export" else package.inputs)
    if source.format == "torch.export":
        return to_onnx(source)
    return retrace_torchscript(source, DeploytoolError("re-traced for --localize", ""))


def op_name(node) -> str:
    """``aten.convolution`` for a node calling ``aten.convolution.default``."""
    return ".".join(str(node.target).split(".")[:2])


def module_path(node) -> str:
    """The path of the innermost module the node was traced in (``features.3.conv``); empty at
    the top level."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


class _Graph:
    """The nodes of an unlifted program's graph that a cut can end at."""

    def __init__(self, graph):
        self.order = list(graph.nodes)
        self.position = {n: i for i, n in enumerate(self.order)}
        self.output = next(n for n in self.order if n.op == "output")
        self.dependent = self._input_dependent()
        useful = self._reaching_output()
        self.candidates = [n for n in self.order
                           if n in self.dependent and n in useful and _is_layer(n)]

    def _input_dependent(self) -> set:
        found = set()
        for node in self.order:
            if node.op == "placeholder" or any(a in found for a in node.all_input_nodes):
                if node.op not in ("output", "call_module"):  # call_module: torch.export's guards
                    found.add(node)
        return found

    def _reaching_output(self) -> set:
        found, stack = set(), [self.output]
        while stack:
            for arg in stack.pop().all_input_nodes:
                if arg not in found:
                    found.add(arg)
                    stack.append(arg)
        return found

    def live(self, last) -> list:
        """The tensors computed from the inputs up to ``last`` that a later node (or the
        output) still reads (the inputs themselves cannot differ)."""
        end = self.position[last]
        return [n for n in self.order[:end + 1]
                if n in self.dependent and n.op != "placeholder" and _is_tensor(n)
                and any(self.position[u] > end for u in n.users)]

    def reported(self, node):
        """The node to name: a multi-output operator rather than the getitem of its result."""
        return node.args[0] if node.op == "call_function" and _is_getitem(node) else node

    def weights(self, node) -> list[str]:
        """The parameters and buffers ``node`` reads, directly or through nodes that depend on
        no input (a transposed weight)."""
        found, stack, seen = [], list(node.all_input_nodes), set()
        while stack:
            arg = stack.pop()
            if arg in seen:
                continue
            seen.add(arg)
            if arg.op == "get_attr":
                found.append(str(arg.target))
            elif arg not in self.dependent:
                stack.extend(arg.all_input_nodes)
        return sorted(found)


def _is_getitem(node) -> bool:
    import operator

    return node.target is operator.getitem


def _is_tensor(node) -> bool:
    import torch

    return isinstance(node.meta.get("val"), torch.Tensor)


def _is_layer(node) -> bool:
    """A call whose float result a layer computed (not a view, copy or index)."""
    if node.op != "call_function" or not _is_tensor(node):
        return False
    if not node.meta["val"].dtype.is_floating_point:
        return False
    source = node.args[0] if _is_getitem(node) else node
    if _is_getitem(node) and not (source.op == "call_function" and
                                  isinstance(source.meta.get("val"), tuple | list)):
        return False
    name = str(source.target).split(".")
    return not (len(name) > 1 and name[1] in MOVES)


class _Cut:
    """Builds the graph cut after one node, and compares it with the same cut run eagerly."""

    def __init__(self, module, graph: _Graph, package: Package, target, arrays: list,
                 max_error: float, log):
        self.module, self.graph, self.package = module, graph, package
        self.target, self.arrays, self.max_error, self.log = target, arrays, max_error, log
        self.settings = package_settings(package)
        self.builds = 0

    def compare(self, index: int) -> Comparison:
        """The cut after candidate ``index``: the node's own comparison, unless another value
        live there differs (then the worst of those)."""
        node = self.graph.candidates[index]
        live = self.graph.live(node)
        cut = _cut_module(self.module, live)
        expected = [t.detach().numpy() for t in cut(*self._tensors())]
        actual = self._build_and_run(cut, node)
        self.builds += 1
        results = [compare(n.name, "pytorch", a, e, max_error=self.max_error)
                   for n, a, e in zip(live, actual, expected, strict=True)]
        own = results[live.index(node)] if node in live else results[-1]
        failed = [r for r in results if not r.passed]
        result = own if own.passed == (not failed) else max(failed, key=lambda r: r.scaled_error)
        shown = self.graph.reported(node)
        self.log(f"  cut after {op_name(shown)} '{shown.name}' ({len(live)} live values): "
                 f"scaled error {result.scaled_error:.3g} {'ok' if result.passed else 'DIFFERS'}")
        return result

    def _tensors(self) -> list:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(a)) for a in self.arrays]

    def _build_and_run(self, cut, node) -> list[np.ndarray]:
        import torch

        from ..frontends.exported import prepare_program

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(cut, tuple(self._tensors()), strict=False)
        except Exception as err:
            raise DeploytoolError(f"--localize could not export the model cut after "
                                  f"'{node.name}' ({type(err).__name__})",
                                  "Report it with the model") from err
        prepared = prepare_program(program, self.package.inputs)
        imported = import_model(prepared)
        return build_and_run(imported.mod, self.target, self.settings, self.arrays,
                             f"'{node.name}'")


def _cut_module(module, outputs: list):
    """A graph module computing ``module``'s graph up to ``outputs``, and returning them."""
    import torch

    graph = torch.fx.Graph()
    mapping: dict = {}
    graph.graph_copy(module.graph, mapping)
    graph.output(tuple(mapping[n] for n in outputs))
    cut = torch.fx.GraphModule(module, graph)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return cut
