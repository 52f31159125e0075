"""Custom operators: the libraries that define them (``--torch-library``), and the error for a
model that calls one no loaded library defines."""

from __future__ import annotations

import os
import re
import runpy
from collections.abc import Iterable
from pathlib import Path

from ..common import last_line
from ..errors import DeploytoolError

# Where the libraries of this process are listed for the processes it starts (bench workers).
LIBRARIES_ENV = "DEPLOYTOOL_TORCH_LIBRARIES"

# torch.jit.load: "Unknown builtin op: torchvision::nms."; torch.export.load logs
# "We failed to resolve torch.ops.myops.scale2.default to an operator".
_UNKNOWN = (re.compile(r"Unknown builtin op: (\w+)::(\w+)"),
            re.compile(r"failed to resolve torch\.ops\.(\w+)\.(\w+)"))

_loaded: list[str] = []


def load_torch_libraries(paths: Iterable[str | Path]) -> None:
    """Load libraries that define custom operators, before any model is loaded: a shared
    library (``torch.ops.load_library``) or a Python file that registers them with
    ``torch.library`` (run as a script). Each is loaded once per process, and listed in
    ``DEPLOYTOOL_TORCH_LIBRARIES`` for child processes (see :func:`load_inherited_libraries`)."""
    import torch

    for path in map(Path, paths):
        resolved = str(path.resolve())
        if resolved in _loaded:
            continue
        if not path.is_file():
            raise DeploytoolError(f"--torch-library {path} not found",
                                  "Pass the path of a .so or .py file that defines the operators")
        try:
            if path.suffix == ".py":
                runpy.run_path(resolved, run_name="__deploytool_torch_library__")
            else:
                torch.ops.load_library(resolved)
        except Exception as err:
            raise DeploytoolError(
                f"--torch-library {path} could not be loaded ({last_line(err)})",
                f"Pass a shared library built for torch {torch.__version__}, or a Python file "
                "that registers the operators with torch.library") from err
        _loaded.append(resolved)
    os.environ[LIBRARIES_ENV] = os.pathsep.join(_loaded)


def loaded_libraries() -> list[str]:
    """The absolute paths of the libraries loaded so far, in order."""
    return list(_loaded)


def load_inherited_libraries() -> None:
    """Load the libraries a parent deploytool process listed in ``DEPLOYTOOL_TORCH_LIBRARIES``."""
    listed = [p for p in os.environ.get(LIBRARIES_ENV, "").split(os.pathsep) if p]
    load_torch_libraries(listed)


def unknown_operator(text: str) -> str | None:
    """The ``namespace::name`` of an operator a model load failed on for want of its
    definition, read from the loader's message; None if that is not why it failed."""
    for pattern in _UNKNOWN:
        found = pattern.search(text)
        if found:
            return f"{found.group(1)}::{found.group(2)}"
    return None


def unknown_operator_error(path: Path, operator: str) -> DeploytoolError:
    """The one-line error for a model that calls an operator no loaded library defines."""
    namespace = operator.split("::")[0]
    return DeploytoolError(
        f"{path} calls {operator}, a custom operator of namespace '{namespace}' that no loaded "
        "library defines",
        f"Pass --torch-library PATH with the .so or .py that defines the '{namespace}' "
        "operators (repeatable)")
