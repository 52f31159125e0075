"""Describe a model file or a package: inputs, outputs, operators, manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .errors import DeploytoolError
from .frontends.load import load_model, to_onnx
from .frontends.model import ExportedModel
from .importer.relax import operator_counts, unsupported_operators
from .package.manifest import load_package


def describe(path: str | Path) -> str:
    """A human-readable description of a ``.pt``, an ``.onnx`` or a package folder."""
    path = Path(path)
    if path.is_dir():
        package = load_package(path)
        return "package " + str(path) + "\n" + json.dumps(package.manifest, indent=2)
    if not path.exists():
        raise DeploytoolError(f"{path} not found", "Check the path")
    try:
        source = load_model(path)
    except DeploytoolError as err:
        if "carries no input shapes" not in str(err):
            raise
        return f"{path}: TorchScript with no stored input shapes (pass --input when compiling)"
    onnx_model = to_onnx(source)
    if isinstance(onnx_model, ExportedModel):  # count the decomposed ATen operators
        counts = Counter(str(n.target) for n in onnx_model.program.graph.nodes
                         if n.op == "call_function")
        missing, kind = [], "ATen"
    else:
        counts = operator_counts(onnx_model.proto)
        missing, kind = unsupported_operators(onnx_model.proto), "ONNX"
    lines = [f"{path} ({source.format}, sha256 {source.sha256[:16]}...)",
             f"route: {onnx_model.route}", "inputs:"]
    lines += [f"  {s}" for s in onnx_model.inputs]
    lines += ["outputs:"] + [f"  {s}" for s in onnx_model.outputs]
    lines += [f"operators ({kind}):"]
    lines += [f"  {op:<24} {n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    if missing:
        lines.append(f"not importable into TVM: {', '.join(missing)}")
    return "\n".join(lines)
