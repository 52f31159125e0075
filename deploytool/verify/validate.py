"""Validate a package against ONNX Runtime and TorchScript on the same seeded inputs."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common import last_line, npy_name, sha256_of
from ..errors import DeploytoolError
from ..frontends.dynamic import validation_sizes
from ..frontends.load import load_model
from ..frontends.torchscript import run_torchscript
from ..package.manifest import Package
from ..tensors import TensorSpec, concrete_specs, symbol_bounds
from ..toolchains.emulation import runner_command
from .comparison import Comparison, compare
from .references import compiled_model_file, onnxruntime_session

Arrays = list[np.ndarray]


@dataclass
class ValidationOptions:
    """Tolerances and inputs of a validation; None means the default."""

    atol: float = 1e-5
    rtol: float = 1e-3
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)  # per output
    seed: int = 0
    samples: int = 1
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # per input
    inputs_dir: Path | None = None
    model: Path | None = None  # the TorchScript reference; None: the compiled file if unchanged
    batch_sizes: tuple[int, ...] = ()  # sizes of the symbolic dims; () means 1, 2 and the bound

    def tolerance(self, output: str) -> tuple[float, float]:
        return self.tolerances.get(output, (self.atol, self.rtol))


@dataclass
class ValidationReport:
    """Every comparison of every output with every reference, over all samples."""

    comparisons: list[Comparison]
    references: list[str]
    samples: int
    seed: int
    notes: list[str] = field(default_factory=list)
    batch_sizes: list[int] | None = None  # the sizes a dynamic package ran at; None: static

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "references": self.references, "samples": self.samples,
                "seed": self.seed, "notes": self.notes,
                "comparisons": [c.to_dict() for c in self.comparisons],
                **({"batch_sizes": self.batch_sizes} if self.batch_sizes else {})}

    def format(self) -> str:
        lines = [f"{'output':<12} {'reference':<12} {'max abs':>10} {'max rel':>10} "
                 f"{'mean abs':>10} {'min atol':>10}  {'worst at':<14} result"]
        for c in self.comparisons:
            lines.append(f"{c.output:<12} {c.reference:<12} {c.max_abs_error:10.3g} "
                         f"{c.max_rel_error:10.3g} {c.mean_abs_error:10.3g} {c.min_atol:10.3g}  "
                         f"{str(c.worst_index):<14} {'PASSED' if c.passed else 'FAILED'}"
                         + (f" ({c.nan_count} NaN)" if c.nan_count else ""))
        lines += [f"note: {n}" for n in self.notes]
        failed = [c for c in self.comparisons if not c.passed]
        tol = {(c.atol, c.rtol) for c in self.comparisons}
        rule = ", ".join(f"atol {a:g} rtol {r:g}" for a, r in sorted(tol))
        lines.append(f"validation {'PASSED' if self.passed else 'FAILED'}: "
                     f"{len(self.comparisons) - len(failed)}/{len(self.comparisons)} comparisons "
                     f"within {rule} against {', '.join(self.references)} "
                     f"({self.samples} sample{'s' if self.samples > 1 else ''}, seed {self.seed}"
                     + (f", batch sizes {', '.join(map(str, self.batch_sizes))}"
                        if self.batch_sizes else "") + ")")
        return "\n".join(lines)


def make_inputs(specs: list[TensorSpec], seed: int,
                ranges: dict[str, tuple[float, float]] | None = None,
                sizes: dict[str, int] | None = None) -> Arrays:
    """Seeded inputs: floats uniform in [lo, hi) (default [-1, 1)), integers in [lo, hi)
    (default [0, 10)), booleans. Symbolic dimensions take their size in ``sizes`` (default 1)."""
    ranges = ranges or {}
    unknown = set(ranges) - {s.name for s in specs}
    if unknown:
        raise DeploytoolError(f"--range names unknown input(s) {', '.join(sorted(unknown))}",
                              f"Use one of {', '.join(s.name for s in specs)}")
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in concrete_specs(specs, sizes):
        if spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, spec.shape).astype(bool))
        elif spec.dtype.startswith("float"):
            lo, hi = ranges.get(spec.name, (-1.0, 1.0))
            arrays.append(rng.uniform(lo, hi, spec.shape).astype(spec.dtype))
        else:
            lo, hi = ranges.get(spec.name, (0, 10))
            if int(hi) <= int(lo):
                raise DeploytoolError(f"empty integer range [{lo}, {hi}) for {spec.name}",
                                      "Give --range NAME:LO:HI with HI > LO")
            arrays.append(rng.integers(int(lo), int(hi), spec.shape).astype(spec.dtype))
    return arrays


def read_inputs_dir(folder: Path, specs: list[TensorSpec]) -> Arrays:
    """Read ``<input name>.npy`` for each input, checking shape and dtype."""
    arrays = []
    for spec in specs:
        path = folder / f"{spec.name}.npy"
        if not path.is_file():
            raise DeploytoolError(f"{path} not found",
                                  f"Write one .npy per input, named after it ({spec.name}.npy)")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DeploytoolError(f"{path} is not a valid .npy file ({err})",
                                  "Save it with numpy.save") from err
        if not spec.matches(array.shape) or str(array.dtype) != spec.dtype:
            raise DeploytoolError(
                f"{path} holds {array.dtype} {tuple(array.shape)} but input '{spec.name}' "
                f"needs {spec.dtype} {_shape_text(spec)}",
                "Save an array of that shape and dtype")
        arrays.append(array)
    return arrays


def _shape_text(spec: TensorSpec) -> str:
    """(1, 512), or (N<=32, 512) for a symbolic dimension."""
    return "(" + ", ".join(f"{d}<={spec.bound(d)}" if spec.bound(d) else str(d)
                           for d in spec.shape) + ")"


def run_native(package: Package, arrays: Arrays) -> Arrays:
    """Run the package's own bin/deploytool-run (no Python), under qemu where needed."""
    prefix, env = runner_command(package.manifest["runtime"]["arch"])
    with tempfile.TemporaryDirectory(prefix="deploytool-run-") as tmp:
        folder = Path(tmp)
        args = []
        for spec, array in zip(package.inputs, arrays, strict=True):
            np.save(folder / f"in{len(args)}.npy", array)
            args += ["--input", f"{spec.name}={folder / f'in{len(args)}.npy'}"]
        out = folder / "out"
        out.mkdir()
        proc = subprocess.run([*prefix, str(package.runner), str(package.path), *args,
                               "--output-dir", str(out)], capture_output=True, text=True,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                              timeout=600)
        if proc.returncode != 0:
            raise DeploytoolError(f"the package failed to run: {proc.stderr.strip()[-500:]}",
                                  "Check that the package is intact (deploytool-run --verify)")
        return [np.load(out / npy_name(spec.name)) for spec in package.outputs]


def onnxruntime_backend(package: Package) -> Callable[[Arrays], Arrays]:
    session = onnxruntime_session(package.path / "model.onnx")
    names = [i.name for i in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays, strict=True)))


def torchscript_backend(package: Package, model: Path) -> Callable[[Arrays], Arrays]:
    source = load_model(model, package.inputs)
    if source.format != "torchscript":
        raise DeploytoolError(f"{model} is not a TorchScript model", "Pass the .pt file")

    def run(arrays: Arrays) -> Arrays:
        try:
            return run_torchscript(source.module, arrays)
        except Exception as err:
            raise DeploytoolError(
                f"{model} does not match the package's inputs "
                f"({', '.join(map(str, package.inputs))}): {last_line(err)}",
                "Pass the model the package was compiled from") from err

    return run


def _torchscript_model(package: Package, options: ValidationOptions, notes: list[str]):
    if options.model is not None:
        if sha256_of(options.model) != package.manifest["model"]["sha256"]:
            notes.append(f"{options.model} differs from the file the package was compiled from")
        return options.model
    if package.manifest["model"]["format"] != "torchscript":
        return None
    compiled = compiled_model_file(package, "torchscript")
    if compiled is None:
        notes.append("TorchScript reference skipped: the compiled model file is not at "
                     f"{package.manifest['compile_options']['model']} (pass --model)")
    return compiled


def _exported_program(package: Package, notes: list[str]):
    """The torch.export program a .pt2 package was compiled from, if it is still there."""
    if package.manifest["model"]["format"] != "torch.export":
        return None
    compiled = compiled_model_file(package, "torch.export")
    if compiled is not None:
        return load_model(compiled).module
    notes.append("torch.export reference skipped: the compiled model file is not at "
                 f"{package.manifest['compile_options']['model']}")
    return None


def validate_package(package: Package, options: ValidationOptions | None = None,
                     native: Callable[[Package, Arrays], Arrays] | None = None
                     ) -> ValidationReport:
    """Run the package, ONNX Runtime and TorchScript on the same inputs and compare outputs.

    Parameters
    ----------
    package : Package
    options : ValidationOptions, optional
    native : callable, optional
        How to run the package; None means its own bin/deploytool-run (:func:`run_native`).

    Returns
    -------
    ValidationReport
    """
    options = options or ValidationOptions()
    native = native or run_native
    if options.samples < 1:
        raise DeploytoolError("--samples must be at least 1", "Pass --samples 1 or more")
    unknown = set(options.tolerances) - {s.name for s in package.outputs}
    if unknown:
        raise DeploytoolError(f"--tol names unknown output(s) {', '.join(sorted(unknown))}",
                              f"Use one of {', '.join(s.name for s in package.outputs)}")
    notes: list[str] = []
    references = {}
    if (package.path / "model.onnx").is_file():  # not on the torch.export route
        references["onnxruntime"] = onnxruntime_backend(package)
    model = _torchscript_model(package, options, notes)
    if model is not None:
        references["torchscript"] = torchscript_backend(package, model)
    program = _exported_program(package, notes)
    if program is not None:
        from ..frontends.exported import run_exported

        references["torch.export"] = lambda arrays: run_exported(program, arrays)
    dynamic = any(s.is_dynamic for s in package.inputs)
    batch_sizes = validation_sizes(package.inputs, options.batch_sizes) if dynamic else None
    if options.batch_sizes and not dynamic:
        raise DeploytoolError("--batch-sizes is for a package with symbolic dimensions, and "
                              f"{package.path} has static shapes", "Drop --batch-sizes")
    if options.inputs_dir is not None:
        samples = [read_inputs_dir(options.inputs_dir, package.inputs)]
        batch_sizes = sorted({int(a.shape[axis]) for spec, a in zip(package.inputs, samples[0],
                                                                    strict=True)
                              for axis, d in enumerate(spec.shape) if isinstance(d, str)}) or None
    else:  # every sample at every size of the symbolic dimensions (one size when static)
        samples = [make_inputs(package.inputs, options.seed + k, options.ranges,
                               {sym: size for sym in symbol_bounds(package.inputs)})
                   for size in batch_sizes or [1] for k in range(options.samples)]
    worst: dict[tuple[str, str], Comparison] = {}
    for arrays in samples:
        actual = native(package, arrays)
        for ref_name, run in references.items():
            expected = run(arrays)
            for spec, a, r in zip(package.outputs, actual, expected, strict=True):
                atol, rtol = options.tolerance(spec.name)
                c = compare(spec.name, ref_name, np.asarray(a), np.asarray(r), atol, rtol)
                key = (spec.name, ref_name)
                if key not in worst or _badness(c) > _badness(worst[key]):
                    worst[key] = c
    return ValidationReport(list(worst.values()), list(references),
                            1 if options.inputs_dir is not None else options.samples,
                            options.seed, notes, batch_sizes)


def _badness(c: Comparison) -> tuple:
    """Orders comparisons so the report keeps each output's worst sample."""
    return (not c.passed, c.min_atol, c.max_abs_error)


def record_validation(package: Package, report: ValidationReport | None, status: str) -> None:
    """Store the outcome in the manifest: passed, failed, skipped or pending."""
    entry = {"status": status}
    if report is not None:
        entry.update(report.to_dict())
    package.manifest["validation"] = entry
    package.save_manifest()


def write_report_json(report: ValidationReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
