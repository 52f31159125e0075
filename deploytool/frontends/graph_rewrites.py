"""Rewrites of a frozen TorchScript graph before ONNX export: structured outputs, string dicts."""

from __future__ import annotations

from collections import Counter


class CannotRewrite(Exception):
    """The graph has a form these rewrites do not handle."""


def _is_none(value) -> bool:
    return value.node().kind() == "prim::Constant" and str(value.type()) == "NoneType"


def _constant_key(value):
    node = value.node()
    if node.kind() != "prim::Constant":
        raise CannotRewrite(f"a dict key computed by {node.kind()}")
    return value.toIValue()


def _set_items(graph, value) -> list:
    """The ``aten::_set_item`` nodes writing into dict ``value``, in program order."""
    return [n for n in graph.nodes() if n.kind() == "aten::_set_item"
            and n.inputsAt(0).unique() == value.unique()]


def _flat_values(graph, value) -> list:
    """The tensors of a returned value in the order Python flattens its result (tuple and list
    elements, NamedTuple fields, dict values by insertion), Nones left out."""
    import torch

    node = value.node()
    kind = node.kind()
    if kind in ("prim::TupleConstruct", "prim::ListConstruct"):
        return [v for i in node.inputs() for v in _flat_values(graph, i)]
    if kind == "prim::DictConstruct" or (kind == "aten::dict" and not list(node.inputs())):
        inputs = list(node.inputs())  # a DictConstruct's keys and values, then the writes
        items: dict = {_constant_key(k): v for k, v in zip(inputs[::2], inputs[1::2],
                                                             strict=True)}
        for n in _set_items(graph, value):  # a key written again keeps its place, as in Python
            items[_constant_key(n.inputsAt(1))] = n.inputsAt(2)
        return [v for i in items.values() for v in _flat_values(graph, i)]
    if _is_none(value):
        return []
    if isinstance(value.type(), torch._C.TensorType):
        return [value]
    raise CannotRewrite(f"an output of type {value.type()} made by {kind}")


def flatten_outputs(graph) -> int:
    """Make ``graph`` return a flat tuple of its output tensors (or the one tensor).

    A dict, NamedTuple or nested tuple result becomes its tensors in Python's flattening order,
    Nones dropped, so that the ONNX exporter (which cannot return a dict or a None) sees only
    tensors. Returns how many tensors the graph now returns.
    """
    import torch

    ret = graph.return_node()
    values = [v for i in ret.inputs() for v in _flat_values(graph, i)]
    if not values:
        raise CannotRewrite("the model returns no tensor")
    if len(values) == 1:
        flat = values[0]
    else:
        node = graph.create("prim::TupleConstruct", values, 1)
        node.insertBefore(ret)
        node.output().setType(torch._C.TupleType([v.type() for v in values]))
        flat = node.output()
    for index in reversed(range(ret.inputsSize())):
        graph.eraseOutput(index)
    graph.registerOutput(flat)
    torch._C._jit_pass_dce(graph)
    return len(values)


DICT_USES = ("aten::_set_item", "aten::__getitem__", "aten::__contains__")


def eliminate_string_dicts(graph) -> int:
    """Replace dicts with constant keys, written and read in straight-line code (torchvision's
    IntermediateLayerGetter and segmentation heads build them), by the values they hold.

    Returns how many dicts were removed.
    """
    import torch

    removed = 0
    dicts = [n for n in graph.nodes() if n.kind() == "prim::DictConstruct"
             or (n.kind() == "aten::dict" and not list(n.inputs()))]
    for node in dicts:
        value = node.output()
        uses = [u.user for u in value.uses()]
        if any(u.kind() not in DICT_USES or u.owningBlock() != node.owningBlock()
               or u.inputsAt(1).node().kind() != "prim::Constant" for u in uses):
            continue
        items = {}
        if node.kind() == "prim::DictConstruct":
            inputs = list(node.inputs())
            if any(k.node().kind() != "prim::Constant" for k in inputs[::2]):
                continue
            items = {k.toIValue(): v for k, v in zip(inputs[::2], inputs[1::2], strict=True)}
        ordered = [n for n in graph.nodes() if n.kind() in DICT_USES
                   and n.inputsAt(0).unique() == value.unique()]  # program order
        for user in ordered:
            key = user.inputsAt(1).toIValue()
            if user.kind() == "aten::_set_item":
                items[key] = user.inputsAt(2)
            elif user.kind() == "aten::__getitem__":
                if key not in items:
                    break  # a KeyError at run time: leave the dict alone from here
                user.output().replaceAllUsesWith(items[key])
            else:
                with graph.insert_point_guard(user):
                    constant = graph.insertConstant(key in items)
                user.output().replaceAllUsesWith(constant)
        for user in ordered:
            if user.kind() != "aten::_set_item" and not list(user.output().uses()):
                user.destroy()
        if all(u.user.kind() == "aten::_set_item" for u in value.uses()):
            for use in list(value.uses()):
                use.user.destroy()
            node.destroy()
            removed += 1
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    return removed


def rewrite_for_export(graph) -> Counter:
    """Apply :func:`flatten_outputs` and :func:`eliminate_string_dicts`; returns what was done.

    Raises
    ------
    CannotRewrite
        When the outputs hold something other than tensors, Nones, tuples, lists and dicts.
    """
    done: Counter = Counter()
    returned = graph.return_node().inputsAt(0)
    if graph.return_node().inputsSize() != 1 or not _is_flat(returned):
        done[f"outputs flattened to {flatten_outputs(graph)} tensor(s)"] += 1
    dicts = eliminate_string_dicts(graph)
    if dicts:
        done["dicts with constant keys replaced by their values"] += dicts
    return done


def _is_flat(value) -> bool:
    """Whether a returned value is a tensor or a plain tuple of tensors."""
    import torch

    if isinstance(value.type(), torch._C.TensorType):
        return True
    node = value.node()
    return (node.kind() == "prim::TupleConstruct" and str(value.type()).startswith("(")
            and all(isinstance(i.type(), torch._C.TensorType) for i in node.inputs()))
