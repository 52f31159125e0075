"""Symbolic (dynamic) dimensions: export axes, Relax shapes and bounds, sizes to validate at."""

from __future__ import annotations

from ..errors import DeploytoolError
from ..tensors import TensorSpec, symbol_bounds

# Sizes a symbol takes where one size is needed: while exporting (2 rather than 1, so that the
# exporter cannot mistake the dimension for a broadcastable 1) and for the package's test vectors.
EXAMPLE_SIZE = 2


def example_sizes(specs: list[TensorSpec]) -> dict[str, int]:
    """One size per symbol: EXAMPLE_SIZE, or the bound when that is smaller."""
    return {sym: min(EXAMPLE_SIZE, bound or EXAMPLE_SIZE)
            for sym, bound in symbol_bounds(specs).items()}


def dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    """torch.onnx.export's ``dynamic_axes`` for the symbolic dimensions of ``specs``."""
    return {s.name: {axis: d for axis, d in enumerate(s.shape) if isinstance(d, str)}
            for s in specs if s.is_dynamic}


def relax_shape_dict(specs: list[TensorSpec]) -> dict[str, list]:
    """from_onnx's ``shape_dict``: one int64 TIR variable per symbol, shared by all inputs."""
    from tvm import tirx

    variables = {sym: tirx.Var(sym, "int64") for sym in symbol_bounds(specs)}
    return {s.name: [variables[d] if isinstance(d, str) else d for d in s.shape] for s in specs}


def annotate_bounds(mod, specs: list[TensorSpec]):
    """Give ``main`` the symbols' upper bounds, which Relax's memory planning uses to allocate
    once for the largest size (``tir_var_upper_bound``); unbounded symbols are left dynamic."""
    bounds = {sym: b for sym, b in symbol_bounds(specs).items() if b is not None}
    if bounds:
        mod["main"] = mod["main"].with_attr("tir_var_upper_bound", bounds)
    return mod


def relax_output_specs(mod, outputs: list[TensorSpec], inputs: list[TensorSpec]
                       ) -> list[TensorSpec]:
    """The outputs' shapes as Relax infers them from the symbolic inputs.

    Each dimension must be a constant or one of the inputs' symbols, so that a host can size its
    output buffers from the input shapes alone (the C API's ``dt_output_shapes``).
    """
    from tvm import relax, tirx

    ret = mod["main"].ret_ty
    types = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    if len(types) != len(outputs):
        raise DeploytoolError(f"the compiled model returns {len(types)} tensors where the export "
                              f"gave {len(outputs)}", "Report it with the model attached")
    bounds = symbol_bounds(inputs)
    specs = []
    for spec, ty in zip(outputs, types, strict=True):
        shape = getattr(ty, "shape", None)
        if not isinstance(shape, relax.ShapeExpr):
            raise DeploytoolError(f"output '{spec.name}' has no shape the compiler can infer from "
                                  "the symbolic inputs", "Use static shapes for this model")
        dims: list[int | str] = []
        for value in shape.values:
            if isinstance(value, tirx.IntImm):
                dims.append(int(value.value))
            elif isinstance(value, tirx.Var) and value.name in bounds:
                dims.append(value.name)
            else:
                raise DeploytoolError(
                    f"output '{spec.name}' has dimension '{value}', which is not a constant or "
                    f"an input's symbol ({', '.join(bounds)})",
                    "Only outputs whose sizes are constants or input symbols are supported (e.g. "
                    "a dynamic batch); make the other dimensions static")
        specs.append(TensorSpec(spec.name, tuple(dims), spec.dtype,
                                tuple((d, bounds[d]) for d in dict.fromkeys(dims)
                                      if isinstance(d, str) and bounds[d] is not None)))
    return specs


def validation_sizes(specs: list[TensorSpec], requested: tuple[int, ...] = ()) -> list[int]:
    """The sizes a dynamic package is validated at: ``requested``, or 1, 2 and the bound (8 for
    an unbounded symbol). Every symbol takes the same size in one run."""
    bounds = symbol_bounds(specs)
    limit = min((b for b in bounds.values() if b is not None), default=None)
    sizes = sorted(set(requested)) if requested else sorted({1, 2, limit or 8})
    if limit is not None:
        sizes = sizes if requested else [s for s in sizes if s <= limit]
        above = [s for s in sizes if s > limit]
        if above:
            raise DeploytoolError(
                f"--batch-sizes {','.join(map(str, sizes))} exceeds the package's upper bound "
                f"{limit} ({', '.join(f'{k}<={v}' for k, v in bounds.items() if v)})",
                f"Give sizes from 1 to {limit}")
    if any(s < 1 for s in sizes):
        raise DeploytoolError("--batch-sizes must be positive", "Give sizes of 1 or more")
    return sizes
