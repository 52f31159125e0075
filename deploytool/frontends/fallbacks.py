"""Fallbacks for TorchScript models the ONNX exporter rejects: freeze, fold, rewrite, retry."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from ..common import last_line
from ..errors import DeploytoolError

# Runtime queries whose answer is fixed when a deployed model runs: no autocast, no autograd,
# no nested tensors. Replacing them by constants lets TorchScript fold the branches they guard
# (for example the fused "fast path" of nn.TransformerEncoderLayer, which has no ONNX form).
INFERENCE_CONSTANTS = {
    "aten::is_autocast_enabled": False,
    "aten::is_autocast_cpu_enabled": False,
    "aten::is_grad_enabled": False,
    "prim::requires_grad": False,
    "prim::is_nested": False,
}

PT2_HINT = ("Save the model with torch.export.save(torch.export.export(model, args), "
            "'model.pt2') and compile the .pt2, which skips ONNX")


def _nodes(block):
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _nodes(sub)


def _replace_with_constant(graph, node, value) -> None:
    with graph.insert_point_guard(node):
        constant = graph.insertConstant(value)
    node.output().replaceAllUsesWith(constant)
    node.destroy()


def _non_empty_string(value) -> bool:
    """Whether a TorchScript str value is provably non-empty (constants, formats, If merges)."""
    node = value.node()
    if node.kind() == "prim::Constant":
        constant = value.toIValue()
        return isinstance(constant, str) and constant != ""
    if node.kind() == "aten::format":
        template = node.inputsAt(0)
        return (template.node().kind() == "prim::Constant"
                and template.toIValue().replace("{}", "") != "")
    if node.kind() == "prim::If":
        index = list(node.outputs()).index(value)
        return all(_non_empty_string(list(block.outputs())[index]) for block in node.blocks())
    return False


def _fold(graph) -> Counter:
    """Fold what inference fixes, until nothing changes; returns what was replaced."""
    import torch

    done: Counter = Counter()
    for node in list(_nodes(graph)):
        kind = node.kind()
        if kind in INFERENCE_CONSTANTS:
            _replace_with_constant(graph, node, INFERENCE_CONSTANTS[kind])
            done[kind] += 1
    changed = True
    while changed:
        changed = False
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)
        for node in list(_nodes(graph)):
            inputs = list(node.inputs())
            if node.kind() == "aten::__is__" and inputs[0].unique() == inputs[1].unique():
                _replace_with_constant(graph, node, True)  # `x is x`
                done["x is x"] += 1
                changed = True
            elif (node.kind() == "aten::gt" and inputs[0].node().kind() == "aten::len"
                  and inputs[1].node().kind() == "prim::Constant" and inputs[1].toIValue() == 0
                  and str(inputs[0].node().inputsAt(0).type()) == "str"
                  and _non_empty_string(inputs[0].node().inputsAt(0))):
                _replace_with_constant(graph, node, True)  # `if reason:` on a set reason
                done["non-empty string test"] += 1
                changed = True
    return done


def specialise_for_inference(module):
    """Freeze ``module`` and fold the runtime queries that inference fixes.

    Parameters
    ----------
    module : torch.jit.ScriptModule
        In eval mode.

    Returns
    -------
    (torch.jit.ScriptModule, collections.Counter)
        The frozen, folded module and how many of each query were replaced.
    """
    import torch

    frozen = torch.jit.freeze(module.eval())
    return frozen, _fold(frozen.graph)


def unsupported_aten_operator(err: Exception) -> str | None:
    """The operator named by a TorchScript exporter error, if it names one."""
    match = re.search(r"operator '([\w:.]+)'", str(err))
    return match.group(1) if match else None


def export_with_fallbacks(module, args, export: Callable, first: Exception | None,
                          notes: list[str]) -> bytes:
    """Retry an ONNX export that failed with ``first``, after freezing, specialising and
    rewriting the graph (:func:`.graph_rewrites.rewrite_for_export`: structured outputs become a
    flat tuple, dicts with constant keys their values).

    Parameters
    ----------
    module : torch.jit.ScriptModule
    args : tuple of torch.Tensor
        Sample inputs.
    export : callable
        Exports a module, returning the ONNX bytes.
    first : Exception or None
        Why the plain export failed; None when it was not tried (the model returns a dict, a
        NamedTuple, a nested tuple or Nones, which only the rewritten graph can export).
    notes : list of str
        Receives a line saying what was done.

    Returns
    -------
    bytes
        The ONNX model.
    """
    import torch

    from ..verify.references import flat_outputs
    from .graph_rewrites import rewrite_for_export

    operator = unsupported_aten_operator(first) if first is not None else None
    try:
        frozen, folded = specialise_for_inference(module)
        folded.update(rewrite_for_export(frozen.graph))
        with torch.no_grad():
            expected, got = module(*args), frozen(*args)
        for a, b in zip(flat_outputs(expected), flat_outputs(got), strict=True):
            scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale):
                # (freezing folds batch norms into convolutions: rounding moves, relatively)
                raise RuntimeError("freezing changed the model's outputs")
        data = export(frozen)
    except Exception as second:
        what = (f"the TorchScript-to-ONNX exporter has no ONNX form of {operator}"
                if operator else "export to ONNX failed"
                + (f" ({last_line(first, limit=300)})" if first is not None else ""))
        raise DeploytoolError(
            f"{what} (stage export; retried after torch.jit.freeze with inference constants "
            f"for {', '.join(INFERENCE_CONSTANTS)}: {last_line(second, limit=300)})",
            f"{PT2_HINT}, or rewrite that part of the model") from second
    replaced = ", ".join(f"{kind} x{count}" for kind, count in sorted(folded.items()))
    why = (f"plain ONNX export failed ({last_line(first, limit=300)})" if first is not None
           else "the model returns more than a tensor or a tuple of tensors")
    notes.append(f"{why}; exported after torch.jit.freeze, folding inference constants and "
                 f"rewriting the graph ({replaced or 'none'})")
    return data
