"""Tensor specs: names, shapes and dtypes of model inputs and outputs, and their parsing."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace

import numpy as np

from .errors import DeploytoolError, UsageError

DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
# A symbolic dimension's name (as stored: ONNX's dim_param names count too).
SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A symbolic dimension as written in --input: a name starting with an uppercase letter (so that a
# typo such as 1xq is not taken for one), optionally with an upper bound (N, N<=32, Batch<=8).
SYMBOLIC_DIM = re.compile(r"(?P<name>[A-Z][A-Za-z0-9_]*)(?:<=(?P<bound>[0-9]+))?")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model."""

    name: str
    shape: tuple[int | str, ...]  # a str entry is a symbolic dimension (e.g. "N")
    dtype: str = "float32"
    bounds: tuple[tuple[str, int], ...] = ()  # (symbol, upper bound) of bounded symbols

    def to_dict(self) -> dict:
        data = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.bounds:
            data["bounds"] = dict(self.bounds)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        try:
            shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
            bounds = tuple((str(k), int(v)) for k, v in dict(data.get("bounds") or {}).items())
            spec = cls(str(data["name"]), shape, str(data.get("dtype", "float32")), bounds)
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(
                f"invalid tensor entry {json.dumps(data)}",
                'Write it as {"name": "x", "shape": ["N", 512], "dtype": "float32", '
                '"bounds": {"N": 32}} (bounds and symbolic dimensions are optional)',
            ) from err
        return _checked(spec, json.dumps(data))

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbolic dimensions, in order of first appearance."""
        return tuple(dict.fromkeys(d for d in self.shape if isinstance(d, str)))

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.shape)

    def bound(self, symbol: str) -> int | None:
        """The upper bound of ``symbol``; None when it has none."""
        return dict(self.bounds).get(symbol)

    def concrete(self, sizes: dict[str, int]) -> TensorSpec:
        """This spec with each symbolic dimension replaced by its size in ``sizes``."""
        return replace(self, shape=tuple(sizes[d] if isinstance(d, str) else d
                                         for d in self.shape), bounds=())

    def matches(self, shape) -> bool:
        """Whether a concrete ``shape`` fits: same rank, static dims equal, symbols in bounds."""
        shape = tuple(shape)
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape, strict=True):
            if isinstance(want, str):
                bound = self.bound(want)
                if got < 1 or (bound is not None and got > bound):
                    return False
            elif want != got:
                return False
        return True

    def __str__(self) -> str:
        bounds = dict(self.bounds)
        dims = [f"{d}<={bounds[d]}" if d in bounds else str(d) for d in self.shape]
        separator = "," if any("x" in d for d in dims) else "x"
        shape = separator.join(dims) + ("," if separator == "," and len(dims) == 1 else "")
        return f"{self.name}:{shape}:{self.dtype}"


def _checked(spec: TensorSpec, text: str) -> TensorSpec:
    if not spec.name:
        raise UsageError(f"input spec '{text}' has no name", "Write it as NAME:SHAPE:DTYPE")
    if any(not isinstance(d, str) and d <= 0 for d in spec.shape):
        raise UsageError(f"input spec '{text}' has a dimension <= 0", "Use positive sizes")
    for d in spec.shape:
        if isinstance(d, str) and not SYMBOL.fullmatch(d):
            raise UsageError(f"input spec '{text}' has a malformed symbolic dimension '{d}'",
                             "Name it with letters, digits and _ (N, batch), e.g. N<=32")
    for symbol, bound in spec.bounds:
        if symbol not in spec.shape:
            raise UsageError(f"input spec '{text}' bounds '{symbol}', which is not in its shape",
                             "Bound only symbolic dimensions of the shape")
        if bound < 1:
            raise UsageError(f"input spec '{text}' bounds '{symbol}' by {bound}",
                             f"Give an upper bound of at least 1, e.g. {symbol}<=32")
    if spec.dtype not in DTYPES:
        raise UsageError(f"input spec '{text}' has unknown dtype '{spec.dtype}'",
                         f"Use one of {', '.join(DTYPES)}")
    return spec


def parse_input_spec(text: str) -> TensorSpec:
    """Parse ``NAME:SHAPE[:DTYPE]`` such as ``x:1x3x224x224:float32``.

    Parameters
    ----------
    text : str
        The spec; the dtype defaults to float32 and a scalar has an empty shape (``x::int64``).
        A dimension may be symbolic: a name starting with an uppercase letter, with an optional
        upper bound (``x:N<=32x3x224x224`` runs any batch from 1 to 32). Dimensions are joined by
        ``x``, or by ``,`` when a name contains an x (``tokens:Batch,Max_len<=128:int64``).

    Returns
    -------
    TensorSpec
    """
    parts = text.rsplit(":", 2)
    if len(parts) == 2:
        parts.append("float32")
    if len(parts) != 3:
        raise UsageError(f"malformed input spec '{text}'",
                         "Write it as NAME:SHAPE:DTYPE, for example x:1x512:float32")
    name, shape_text, dtype = parts
    separator = "," if "," in shape_text else "x"
    tokens = shape_text.rstrip(",").split(separator) if shape_text else []
    shape: list[int | str] = []
    bounds: dict[str, int] = {}
    for token in tokens:
        if token.isdigit():
            shape.append(int(token))
            continue
        match = SYMBOLIC_DIM.fullmatch(token)
        if match is None:
            raise UsageError(f"malformed shape '{shape_text}' in input spec '{text}' ('{token}' "
                             "is not a size or a symbolic dimension)",
                             "Write sizes, or names starting with an uppercase letter with an "
                             "optional upper bound, joined by x: 1x3x224x224 or N<=32x3x224x224")
        symbol, bound = match["name"], match["bound"]
        if bound is not None:
            if bounds.get(symbol, int(bound)) != int(bound):
                raise UsageError(f"input spec '{text}' gives '{symbol}' two upper bounds",
                                 f"Bound {symbol} once")
            bounds[symbol] = int(bound)
        shape.append(symbol)
    return _checked(TensorSpec(name, tuple(shape), dtype, tuple(bounds.items())), text)


def symbol_bounds(specs: list[TensorSpec]) -> dict[str, int | None]:
    """Every symbolic dimension of ``specs`` with its upper bound (None: unbounded).

    A symbol names one size across all inputs; a bound given on any input applies to all.
    """
    found: dict[str, int | None] = {}
    for spec in specs:
        for symbol in spec.symbols:
            bound, known = spec.bound(symbol), found.get(symbol)
            if bound is not None and known is not None and bound != known:
                raise UsageError(f"symbol '{symbol}' has upper bound {known} on one input and "
                                 f"{bound} on '{spec.name}'", f"Give {symbol} one bound")
            found[symbol] = bound if bound is not None else known
    return found


def with_bounds(specs: list[TensorSpec], bounds: dict[str, int | None]) -> list[TensorSpec]:
    """``specs`` with every symbol's bound written on each tensor that uses it."""
    return [replace(s, bounds=tuple((sym, bounds[sym]) for sym in s.symbols
                                    if bounds.get(sym) is not None)) for s in specs]


def concrete_specs(specs: list[TensorSpec], sizes: dict[str, int] | None = None
                   ) -> list[TensorSpec]:
    """``specs`` with symbolic dimensions set to ``sizes`` (a missing symbol: 1)."""
    sizes = sizes or {}
    return [s.concrete({sym: sizes.get(sym, 1) for sym in s.symbols}) if s.is_dynamic else s
            for s in specs]


def parse_inputs_json(text: str) -> list[TensorSpec]:
    """Parse an ``inputs.json`` document: a list of ``{"name", "shape", "dtype"}`` objects."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"inputs.json is not valid JSON ({err})",
                         "Fix the file or pass --input NAME:SHAPE:DTYPE") from err
    if not isinstance(data, list) or not data:
        raise UsageError("inputs.json must be a non-empty list of tensor entries",
                         'Write [{"name": "x", "shape": [1, 512], "dtype": "float32"}]')
    return [TensorSpec.from_dict(item if isinstance(item, dict) else {}) for item in data]


# Inputs may take at most this share of the machine's memory: tensors that large would leave
# nothing for the model, the references and the compiler.
MEMORY_SHARE = 0.5


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(specs: list[TensorSpec], sizes: dict[str, int] | None = None) -> None:
    """Raise a DeploytoolError, before anything is allocated, when creating data for ``specs``
    needs more than MEMORY_SHARE of the physical memory.

    A symbolic dimension counts at its size in ``sizes``, else at its upper bound, else as 1.
    Random data is drawn in 64 bits and then cast, so each element counts 8 bytes more than its
    dtype's.
    """
    sizes = dict(sizes or {})
    for symbol, bound in symbol_bounds(specs).items():
        sizes.setdefault(symbol, bound or 1)
    needs = []
    for spec in concrete_specs(specs, sizes):
        elements = math.prod(spec.shape)
        needs.append((elements * (np.dtype(spec.dtype).itemsize + 8), elements, spec))
    total, limit = sum(n[0] for n in needs), physical_memory() * MEMORY_SHARE
    if total > limit:
        _, elements, spec = max(needs, key=lambda n: n[0])
        size = elements * np.dtype(spec.dtype).itemsize
        raise DeploytoolError(
            f"input {spec} holds {elements:,} elements ({_gib(size)}); making the inputs' data "
            f"takes {_gib(total)}, more than half of this machine's {_gib(physical_memory())} "
            "of memory", "Give smaller shapes with --input (or a smaller upper bound for a "
            "symbolic dimension)")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def sample_inputs(specs: list[TensorSpec], seed: int = 0,
                  sizes: dict[str, int] | None = None, integers: int = 10) -> list[np.ndarray]:
    """Seeded sample data: floats in [-1, 1), integers in [0, ``integers``), booleans; symbolic
    dimensions take their size in ``sizes`` (default 1)."""
    check_memory(specs, {sym: (sizes or {}).get(sym, 1) for sym in symbol_bounds(specs)})
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in concrete_specs(specs, sizes):
        if spec.dtype.startswith("float"):
            arrays.append(rng.uniform(-1, 1, spec.shape).astype(spec.dtype))
        elif spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, spec.shape).astype(bool))
        else:
            arrays.append(rng.integers(0, integers, spec.shape).astype(spec.dtype))
    return arrays
