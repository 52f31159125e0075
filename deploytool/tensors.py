"""Tensor specs: names, shapes and dtypes of model inputs and outputs, and their parsing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .errors import UsageError

DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        try:
            spec = cls(str(data["name"]), tuple(int(d) for d in data["shape"]),
                       str(data.get("dtype", "float32")))
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(
                f"invalid tensor entry {json.dumps(data)}",
                'Write it as {"name": "x", "shape": [1, 512], "dtype": "float32"}',
            ) from err
        return _checked(spec, json.dumps(data))

    def __str__(self) -> str:
        return f"{self.name}:{'x'.join(map(str, self.shape))}:{self.dtype}"


def _checked(spec: TensorSpec, text: str) -> TensorSpec:
    if not spec.name:
        raise UsageError(f"input spec '{text}' has no name", "Write it as NAME:SHAPE:DTYPE")
    if any(d <= 0 for d in spec.shape):
        raise UsageError(f"input spec '{text}' has a dimension <= 0", "Use positive sizes")
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
    try:
        shape = tuple(int(d) for d in shape_text.split("x")) if shape_text else ()
    except ValueError as err:
        raise UsageError(f"malformed shape '{shape_text}' in input spec '{text}'",
                         "Write the shape as sizes joined by x, for example 1x3x224x224") from err
    return _checked(TensorSpec(name, shape, dtype), text)


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
