"""compile_model: TorchScript, ONNX or torch.export -> Relax -> target library -> package."""

from __future__ import annotations

import datetime
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .build import build_library
from .frontends import load_model, to_onnx
from .importer import import_relax
from .native import build_native
from .package import (
    FORMAT_VERSION,
    Package,
    atomic_folder,
    file_digests,
    write_archive,
    write_examples,
)
from .targets import TargetSpec, load_target
from .tensors import TensorSpec

Log = Callable[[str], None]


@dataclass
class CompileOptions:
    """Every option of a compile, resolved; None means the default."""

    model: Path
    target: str = "cpu"
    inputs: list[TensorSpec] | None = None
    output: Path | None = None
    force: bool = False
    archive: bool = False

    def output_dir(self) -> Path:
        return self.output or Path("artifacts") / self.model.stem

    def display(self) -> str:
        inputs = ", ".join(map(str, self.inputs)) if self.inputs else "from the model file"
        return (f"model   {self.model}\ntarget  {self.target}\ninputs  {inputs}\n"
                f"output  {self.output_dir()}{' (archive too)' if self.archive else ''}")


@dataclass
class StageTimer:
    """Times named stages and reports each as it ends."""

    log: Log
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.log(f"  {name:<10} {self.seconds[name]:8.2f} s")


def _versions() -> dict[str, str]:
    import onnx
    import torch
    import tvm
    import tvm_ffi

    return {"deploytool": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__,
            "torch": torch.__version__, "onnx": onnx.__version__,
            "python": platform.python_version()}


def compile_model(options: CompileOptions, log: Log | None = None) -> Package:
    """Compile a model file into a package.

    Parameters
    ----------
    options : CompileOptions
    log : callable, optional
        Receives one line per stage; None means silent.

    Returns
    -------
    Package
    """
    log = log or (lambda _line: None)
    timer = StageTimer(log)
    target: TargetSpec = load_target(options.target).resolved()
    destination = options.output_dir()
    with atomic_folder(destination, options.force) as scratch:
        with timer.stage("load"):
            source = load_model(options.model, options.inputs)
        with timer.stage("export"):
            onnx_model = to_onnx(source)
            if onnx_model.proto is not None:  # None on the torch.export route
                (scratch / "model.onnx").write_bytes(onnx_model.proto.SerializeToString())
        with timer.stage("import"):
            mod = import_relax(onnx_model)
        for note in onnx_model.notes:
            log(f"  note: {note}")
        with timer.stage("build"):
            build_library(mod, target, scratch / "model.so")
        with timer.stage("package"):
            build_native(target, scratch)
            manifest = {
                "format_version": FORMAT_VERSION,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "model": {"name": source.name, "file": source.path.name, "sha256": source.sha256,
                          "format": source.format, "route": onnx_model.route,
                          "notes": onnx_model.notes},
                "inputs": [s.to_dict() for s in onnx_model.inputs],
                "outputs": [s.to_dict() for s in onnx_model.outputs],
                "target": {**target.to_dict(), "resolved_cpu": target.cpu},
                "runtime": {"arch": target.arch, "cpu_features": target.cpu_features(),
                            "device": "cpu"},
                "versions": _versions(),
                "compile_options": {**asdict(options), "model": str(options.model),
                                    "output": str(destination),
                                    "inputs": [str(s) for s in onnx_model.inputs]},
                "stage_seconds": timer.seconds,
                "files": file_digests(scratch),
                "validation": None,
                "tuning": None,
                "benchmarks": None,
            }
            package = Package(scratch, manifest)
            package.save_manifest()
            write_examples(scratch, manifest)
    package = Package(destination, manifest)
    if options.archive:
        write_archive(destination)
    return package
