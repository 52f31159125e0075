"""The data frontends produce: a loaded model file, then a graph the importer takes (ONNX or a
torch.export program), then the imported Relax module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..tensors import TensorSpec


@dataclass
class SourceModel:
    """A model file as loaded, with its input specs."""

    path: Path
    format: str
    sha256: str
    inputs: list[TensorSpec]
    module: Any = None  # the torch.jit.ScriptModule or the onnx.ModelProto

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass
class OnnxModel:
    """An ONNX model with its resolved input and output specs."""

    proto: Any  # onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str] = field(default_factory=list)
    route: str = ""  # how the model got here, e.g. "torchscript -> onnx -> relax"


@dataclass
class ExportedModel:
    """A torch.export program, decomposed and fixed, imported into Relax without ONNX."""

    program: Any  # torch.export.ExportedProgram
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str] = field(default_factory=list)
    route: str = "torch.export -> relax"
    replaces: Any = None  # on a second route: the DeploytoolError that ended the first one


# What the importer takes: the model as a graph, with its resolved input and output specs.
GraphModel = OnnxModel | ExportedModel


@dataclass
class RelaxModel:
    """The imported Relax module, with the specs and notes of the import (bounds of symbolic
    dimensions, output shapes in terms of the input symbols, converters applied)."""

    mod: Any  # tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str]
    route: str
