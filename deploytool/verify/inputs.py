"""Validation inputs: seeded samples that look like real data, or the user's own .npy files.

Floats are drawn from a standard normal distribution (the spread of normalised images and
embeddings), integer inputs within the range the model accepts (the size of the embedding table
they index, read from the model by :func:`integer_ranges`), and inputs named like masks are 0/1.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..common import last_line
from ..errors import DeploytoolError
from ..tensors import TensorSpec, check_memory, concrete_specs, symbol_bounds

Arrays = list[np.ndarray]
MASK = re.compile(r"mask", re.IGNORECASE)
DEFAULT_INTEGER_RANGE = (0, 10)


def make_inputs(specs: list[TensorSpec], seed: int,
                ranges: dict[str, tuple[float, float]] | None = None,
                sizes: dict[str, int] | None = None,
                model_ranges: dict[str, tuple[int, int]] | None = None) -> Arrays:
    """Seeded inputs for ``specs``.

    Parameters
    ----------
    specs : list of TensorSpec
    seed : int
    ranges : dict, optional
        ``--range`` per input: floats uniform in [lo, hi), integers in [lo, hi).
    sizes : dict, optional
        Sizes of the symbolic dimensions (default 1).
    model_ranges : dict, optional
        Integer ranges read from the model (see :func:`integer_ranges`).

    Returns
    -------
    list of numpy.ndarray
        Floats standard normal, integers in the model's range (else [0, 10)), masks and
        booleans 0/1; ``ranges`` overrides all of these.
    """
    ranges, model_ranges = ranges or {}, model_ranges or {}
    unknown = set(ranges) - {s.name for s in specs}
    if unknown:
        raise DeploytoolError(f"--range names unknown input(s) {', '.join(sorted(unknown))}",
                              f"Use one of {', '.join(s.name for s in specs)}")
    check_memory(specs, {sym: (sizes or {}).get(sym, 1) for sym in symbol_bounds(specs)})
    rng = np.random.default_rng(seed)
    return [_sample(rng, spec, ranges.get(spec.name), model_ranges.get(spec.name))
            for spec in concrete_specs(specs, sizes)]


def _sample(rng, spec: TensorSpec, given, from_model) -> np.ndarray:
    if spec.dtype == "bool":
        return rng.integers(0, 2, spec.shape).astype(bool)
    if spec.dtype.startswith("float"):
        if given is None:
            return rng.standard_normal(spec.shape).astype(spec.dtype)
        return rng.uniform(given[0], given[1], spec.shape).astype(spec.dtype)
    if given is None:
        given = (0, 2) if MASK.search(spec.name) else (from_model or DEFAULT_INTEGER_RANGE)
    lo, hi = int(given[0]), int(given[1])
    if hi <= lo:
        raise DeploytoolError(f"empty integer range [{lo}, {hi}) for {spec.name}",
                              "Give --range NAME:LO:HI with HI > LO")
    if MASK.search(spec.name) and given == (0, 2) and spec.shape:
        mask = np.ones(spec.shape, dtype=spec.dtype)  # real masks keep the first positions
        length = spec.shape[-1]
        mask[..., rng.integers(max(1, length // 2), length + 1):] = 0
        return mask
    return rng.integers(lo, hi, spec.shape).astype(spec.dtype)


# ONNX operators an index passes through unchanged on its way to a Gather.
_INDEX_PASSTHROUGH = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten",
                      "Expand", "Slice"}


def integer_ranges(graph) -> dict[str, tuple[int, int]]:
    """The range each integer input may take, read from the model: [0, rows) for an input that
    indexes an embedding table of ``rows`` rows (an ONNX Gather on a constant, or aten.embedding
    in a torch.export program). Inputs found in no such table are left out."""
    if getattr(graph, "program", None) is not None:
        by_position = _exported_ranges(graph.program)
        return {graph.inputs[i].name: r for i, r in by_position.items() if i < len(graph.inputs)}
    proto = getattr(graph, "proto", None)
    return _onnx_ranges(proto) if proto is not None else {}


def _onnx_ranges(proto) -> dict[str, tuple[int, int]]:
    tables = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    inputs = {i.name for i in proto.graph.input} - set(tables)
    producer = {out: node for node in proto.graph.node for out in node.output}
    found: dict[str, tuple[int, int]] = {}
    for node in proto.graph.node:
        if node.op_type != "Gather" or node.input[0] not in tables or len(node.input) < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        rows = tables[node.input[0]][axis] if tables[node.input[0]] else 0
        source = _trace_back(node.input[1], producer, inputs)
        if source is not None and rows > 1:
            low, high = found.get(source, (0, rows))
            found[source] = (low, min(high, rows))
    return found


def _trace_back(name: str, producer: dict, inputs: set) -> str | None:
    for _ in range(16):
        if name in inputs:
            return name
        node = producer.get(name)
        if node is None or node.op_type not in _INDEX_PASSTHROUGH:
            return None
        name = node.input[0]
    return None


def _exported_ranges(program) -> dict[int, tuple[int, int]]:
    import torch

    user_inputs = {spec.arg.name for spec in program.graph_signature.input_specs
                   if spec.kind.name == "USER_INPUT"}
    names = [n.name for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    found: dict[int, tuple[int, int]] = {}
    for node in program.graph.nodes:
        if node.target is not torch.ops.aten.embedding.default:
            continue
        weight, index = node.args[0], node.args[1]
        rows = int(weight.meta["val"].shape[0]) if "val" in weight.meta else 0
        while index.op != "placeholder" and index.args and hasattr(index.args[0], "op"):
            index = index.args[0]
        if index.name in names and rows > 1:
            position = names.index(index.name)
            found[position] = (0, min(rows, found.get(position, (0, rows))[1]))
    return found


def read_inputs_dir(folder: Path, specs: list[TensorSpec]) -> Arrays:
    """Read ``<input name>.npy`` for each input, checking shape and dtype."""
    arrays = []
    for spec in specs:
        path = folder / f"{spec.name}.npy"
        if not path.is_file():
            raise DeploytoolError(f"{path} not found",
                                  f"Write one .npy per input, named after it ({spec.name}.npy)")
        arrays.append(read_input(path, spec))
    return arrays


def read_input(path: Path, spec: TensorSpec) -> np.ndarray:
    """Read the .npy file ``path`` as input ``spec``, checking its shape and dtype."""
    try:  # mapped: a header claiming a huge shape allocates nothing before the check
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DeploytoolError(f"{path} is not a valid .npy file ({last_line(err)})",
                              "Save it with numpy.save") from err
    if not spec.matches(array.shape) or str(array.dtype) != spec.dtype:
        raise DeploytoolError(
            f"{path} holds {array.dtype} {tuple(array.shape)} but input '{spec.name}' "
            f"needs {spec.dtype} {_shape_text(spec)}",
            "Save an array of that shape and dtype")
    return np.array(array)


def _shape_text(spec: TensorSpec) -> str:
    """(1, 512), or (N<=32, 512) for a symbolic dimension."""
    return "(" + ", ".join(f"{d}<={spec.bound(d)}" if spec.bound(d) else str(d)
                           for d in spec.shape) + ")"


