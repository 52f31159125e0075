"""The torch.export frontend: ``.pt2`` archives imported with TVM's from_exported_program."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..common import last_line, sha256_of
from ..errors import DeploytoolError
from ..tensors import TensorSpec, sample_inputs
from ..verify.references import named_outputs
from .custom_ops import unknown_operator, unknown_operator_error
from .model import ExportedModel, SourceModel

PT2_HINT = ("Save it with torch.export.save(torch.export.export(model, example_args), "
            "'model.pt2')")


def load_exported(path: Path, inputs: list[TensorSpec] | None) -> SourceModel:
    """Load a ``torch.export.save`` archive; its input specs come from the program.

    Parameters
    ----------
    path : Path
        The ``.pt2`` file.
    inputs : list of TensorSpec, optional
        Must match the program's own input shapes when given (an exported program is specialised
        to them).

    Returns
    -------
    SourceModel
    """
    import torch

    if path.stat().st_size == 0:
        raise DeploytoolError(f"{path} is empty, not a torch.export archive", PT2_HINT)
    if not zipfile.is_zipfile(path):
        raise DeploytoolError(f"{path} is not a torch.export archive (not a zip archive)",
                              PT2_HINT)
    try:
        # It logs the traceback of what is reported here in a line (and the unknown operator).
        with _logged("torch.export") as logged:
            program = torch.export.load(str(path))
    except Exception as err:
        operator = unknown_operator("\n".join([*logged, str(err)]))
        if operator:
            raise unknown_operator_error(path, operator) from err
        raise DeploytoolError(f"{path} could not be loaded as a torch.export archive "
                              f"({last_line(err)})", PT2_HINT) from err
    stored = _program_inputs(program, path)
    if inputs is not None and [(s.shape, s.dtype) for s in inputs] != [
            (s.shape, s.dtype) for s in stored]:
        raise DeploytoolError(
            f"--input {' '.join(map(str, inputs))} does not match the exported program's inputs "
            f"{' '.join(map(str, stored))}",
            "Drop --input (a .pt2 carries its shapes), or export the model again with those shapes")
    return SourceModel(path, "torch.export", sha256_of(path), stored, program)


@contextmanager
def _logged(name: str) -> Iterator[list[str]]:
    """Keep what a library's logger says during the block (errors included) in the list it
    yields, instead of printing it."""
    logger = logging.getLogger(name)
    messages: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter())  # the message, then the traceback
    handler.emit = lambda record: messages.append(handler.format(record))
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [handler], False  # torch gives it a handler of its own
    try:
        yield messages
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def _program_inputs(program, path: Path) -> list[TensorSpec]:
    import torch

    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise DeploytoolError(f"input '{node.name}' of {path} is not a tensor",
                                  "Export a model whose forward() takes tensors only")
        if not all(isinstance(d, int) for d in value.shape):
            raise DeploytoolError(
                f"input '{node.name}' of {path} has a dynamic shape {tuple(value.shape)}",
                "Export it with static shapes (no dynamic_shapes argument)")
        specs.append(TensorSpec(node.name, tuple(value.shape), str(value.dtype).split(".")[-1]))
    return specs


def fix_negative_select(program) -> int:
    """Make ``aten.select`` indices non-negative; returns how many were changed.

    TVM 0.27's translator turns ``x[:, -1]`` into a take with index -1 that reads out of bounds
    (wrong numbers, no error); this is what made an LSTM ending in ``y[:, -1]`` go wrong.
    """
    import torch

    changed = 0
    for node in program.graph.nodes:
        if (node.op == "call_function" and node.target == torch.ops.aten.select.int
                and isinstance(node.args[2], int) and node.args[2] < 0):
            size = node.args[0].meta["val"].shape[node.args[1]]
            node.args = (node.args[0], node.args[1], node.args[2] + int(size))
            changed += 1
    if changed:
        program.graph_module.recompile()
    return changed


def _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
                                 proj_weight, proj_bias, mask=None, need_weights=True,
                                 average_attn_weights=True, mask_type=None):
    """nn.MultiheadAttention's fused inference kernel (batch first), in plain operators."""
    import torch
    from torch.nn import functional

    if mask is not None:
        return NotImplemented
    batch, length, _ = query.shape
    head = embed_dim // num_head
    weights = qkv_weight.split(embed_dim)
    biases = qkv_bias.split(embed_dim)
    q, k, v = (functional.linear(x, w, b).reshape(batch, -1, num_head, head).transpose(1, 2)
               for x, w, b in zip((query, key, value), weights, biases, strict=True))
    scores = torch.softmax(q @ k.transpose(-2, -1) / head ** 0.5, dim=-1)
    out = (scores @ v).transpose(1, 2).reshape(batch, length, embed_dim)
    out = functional.linear(out, proj_weight, proj_bias)
    if not need_weights:
        return out, query.new_empty((0,))
    return out, scores.mean(dim=1) if average_attn_weights else scores


def _convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
                 groups, *_flags):
    """aten._convolution (what torch.jit.trace records) as aten.convolution."""
    import torch

    return torch.ops.aten.convolution.default(input, weight, bias, stride, padding, dilation,
                                              transposed, output_padding, groups)


def decomposition_table() -> dict:
    """torch.export's default decompositions, plus ours for operators that a traced TorchScript
    graph holds and TVM's importer lacks (the fused attention of nn.MultiheadAttention's fast
    path, and ``_convolution``)."""
    import torch

    table = torch.export.default_decompositions()
    table[torch.ops.aten._native_multi_head_attention.default] = _native_multi_head_attention
    table[torch.ops.aten._convolution.default] = _convolution
    return table


def fix_cumsum_dtype(program) -> int:
    """Give ``aten.cumsum`` its result dtype where torch promotes (bool and small integers sum
    to int64); returns how many were changed.

    TVM 0.27's translator keeps the input's dtype when the call names none, so a cumsum of a
    bool mask (GPT-2's position ids) became a bool sum that LLVM code generation refuses.
    """
    import torch

    changed = 0
    for node in program.graph.nodes:
        if (node.op == "call_function" and node.target == torch.ops.aten.cumsum.default
                and node.kwargs.get("dtype") is None):
            source, result = node.args[0].meta.get("val"), node.meta.get("val")
            if source is not None and result is not None and source.dtype != result.dtype:
                node.kwargs = {**node.kwargs, "dtype": result.dtype}
                changed += 1
    if changed:
        program.graph_module.recompile()
    return changed


# Rewrites of the decomposed program that avoid known TVM importer bugs, by name.
PROGRAM_FIXES: dict[str, Callable] = {"negative select index": fix_negative_select,
                                      "cumsum result dtype": fix_cumsum_dtype}


def prepare_exported(model: SourceModel) -> ExportedModel:
    """Decompose the program, apply :data:`PROGRAM_FIXES`, and find its output specs."""
    return prepare_program(model.module, model.inputs)


def prepare_program(program, inputs: list[TensorSpec], notes: list[str] | None = None,
                    route: str = "torch.export -> relax") -> ExportedModel:
    """Decompose ``program``, apply :data:`PROGRAM_FIXES`, and name its outputs after its result
    (dict keys, NamedTuple fields: see ``named_outputs``)."""
    try:
        decomposed = program.run_decompositions(decomposition_table())
    except Exception as err:
        raise DeploytoolError(f"decomposing the exported program failed ({last_line(err)}) "
                              "(stage export)", "Export the model again with this torch") from err
    notes = list(notes or [])
    for name, fix in PROGRAM_FIXES.items():
        count = fix(decomposed)
        if count:
            notes.append(f"applied torch.export fix '{name}' to {count} node(s)")
    named = run_exported_named(decomposed, sample_inputs(inputs, integers=2))
    outputs = [TensorSpec(n, tuple(t.shape), str(t.dtype)) for n, t in named]
    return ExportedModel(decomposed, list(inputs), outputs, notes, route)


def run_exported_named(program, arrays) -> list[tuple[str, object]]:
    """Run an ExportedProgram eagerly on numpy arrays; returns its outputs as named numpy
    arrays, flattened as ``named_outputs`` does."""
    return run_module_named(program.module(), arrays)


def run_module_named(module, arrays) -> list[tuple[str, object]]:
    """Run a module (an exported program's) eagerly on numpy arrays; its named outputs."""
    import numpy as np
    import torch

    with torch.no_grad():
        result = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    return [(name, t.detach().cpu().numpy()) for name, t in named_outputs(result)]


def run_exported(program, arrays) -> list:
    """Run an ExportedProgram eagerly on numpy arrays; returns its outputs as numpy arrays."""
    return [array for _, array in run_exported_named(program, arrays)]


def import_exported(model: ExportedModel):
    """Convert a prepared program to a Relax IRModule with the weights bound as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(model.program, keep_params_as_input=False,
                                     run_ep_decomposition=False)
    except Exception as err:
        raise DeploytoolError(
            f"TVM's torch.export import failed ({last_line(err)}) (stage import)",
            "Compile the TorchScript (.pt) or ONNX form of the model instead") from err
