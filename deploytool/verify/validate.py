"""Validate a package against ONNX Runtime and TorchScript on the same seeded inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from ..common import last_line, npy_name, sha256_of
from ..errors import DeploytoolError, UsageError
from ..frontends.custom_ops import load_torch_libraries
from ..frontends.dynamic import validation_sizes
from ..frontends.load import load_model
from ..frontends.torchscript import run_torchscript
from ..package.manifest import Package
from ..tensors import symbol_bounds
from ..toolchains.emulation import runner_command
from .comparison import DEFAULT_MAX_ERROR, Comparison, compare
from .float64 import (
    ROUNDED_DRAWS,
    exported_float64,
    faithful,
    float64_results,
    fp32_error,
    torchscript_float64,
)
from .inputs import make_inputs, read_inputs_dir
from .references import compiled_model_file, onnxruntime_session

Arrays = list[np.ndarray]


# An output is vacuous when it moves between samples by less than this many times the error
# bound: a package that ignored its input would then pass. Correct fp32 zoo packages err by
# about 2e-6 of scale; models whose outputs do depend on the input move by 1e-2 or more.
VACUITY_FACTOR = 10
# Where the references differ from each other by more than the bound, a package may differ from
# them by this many times as much, up to MAX_LOOSENING times the bound.
REFERENCE_SPREAD_FACTOR = 2
MAX_LOOSENING = 5
# Where the fp32 references are far from the float64 result, a package may differ from them by
# this many times as much (twice as far from the exact result, plus the reference's own error).
FP32_ERROR_FACTOR = 3
# Against the float64 result, a package may be this many times as far as the worst fp32
# reference (and the float64 model with rounded weights, see float64.py) is on the same sample,
# and never held closer than EXACT_FLOOR. Correct packages of
# the 18 models of make bench measured 0.59 to 1.65 times their references' distance
# (benchmarks/RESULTS.md, "Validation"); a weight scaled by 1.001 before a LayerNorm in Hugging
# Face BERT moved its output by 1.6e-5 of scale, against references 3.3e-7 from float64: inside
# the 1e-4 bound on the references, 10 times this one.
EXACT_FACTOR = 5
EXACT_FLOOR = 1e-6
EXACT = "float64"  # the reference name of that comparison
# A --max-error above the default loosens that comparison to it too: the user accepts that much.
# Outputs below this for every sample are flagged: a trained model's rarely are.
TINY = 1e-6
MAX_SAMPLES = 1000
VACUITY_HINT = ("Validate with trained weights, or real data (--inputs DIR), or inputs that "
                "activate the model (--range NAME:LO:HI); --allow-vacuous accepts it as it is")


@dataclass
class ValidationOptions:
    """Tolerances and inputs of a validation; None means the default (see comparison.py)."""

    max_error: float = DEFAULT_MAX_ERROR  # bound on max|out - ref| / max|ref|
    atol: float | None = None  # with rtol: the allclose rule too, when given
    rtol: float | None = None
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)  # per output
    seed: int = 0
    samples: int = 3
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # per input
    inputs_dir: Path | None = None
    model: Path | None = None  # the TorchScript reference; None: the compiled file if unchanged
    batch_sizes: tuple[int, ...] = ()  # sizes of the symbolic dims; () means 1, 2 and the bound
    allow_vacuous: bool = False  # pass an output that does not depend on the input

    def tolerance(self, output: str) -> tuple[float | None, float | None]:
        return self.tolerances.get(output, (self.atol, self.rtol))

    def check(self) -> None:
        """Raise UsageError for a setting no validation can use: a bound that is negative, zero
        where it must be positive, or not finite; no samples; an empty or reversed range."""
        if not (math.isfinite(self.max_error) and self.max_error > 0):
            raise UsageError(f"--max-error is {self.max_error:g}: the scaled error bound must be "
                             "above 0", "Pass e.g. --max-error 1e-4 (use --atol for an exact "
                             "comparison)")
        for name, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} is {value:g}", f"Pass {name} 0 or more")
        for output, (atol, rtol) in self.tolerances.items():
            if not all(math.isfinite(v) and v >= 0 for v in (atol, rtol)):
                raise UsageError(f"--tol {output}:{atol:g}:{rtol:g} has a negative or infinite "
                                 "tolerance", f"Pass --tol {output}:ATOL:RTOL with both 0 or more")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise UsageError(f"--samples is {self.samples}",
                             f"Pass --samples from 1 to {MAX_SAMPLES}")
        if self.seed < 0:
            raise UsageError(f"--seed is {self.seed}", "Pass --seed 0 or more")
        for name, (lo, hi) in self.ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise UsageError(f"--range {name}:{lo:g}:{hi:g} is empty or not finite",
                                 f"Pass --range {name}:LO:HI with LO < HI")


@dataclass
class Vacuity:
    """Why an output cannot tell a right package from a wrong one."""

    output: str
    reason: str
    scale: float
    spread: float | None  # how far it moved between samples, relative to its scale

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ValidationReport:
    """Every comparison of every output with every reference, over all samples."""

    comparisons: list[Comparison]
    references: list[str]
    samples: int
    seed: int
    notes: list[str] = field(default_factory=list)
    batch_sizes: list[int] | None = None  # the sizes a dynamic package ran at; None: static
    vacuous: list[Vacuity] = field(default_factory=list)
    allow_vacuous: bool = False

    @property
    def compared(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def passed(self) -> bool:
        return self.compared and (not self.vacuous or self.allow_vacuous)

    @property
    def tiny(self) -> list[str]:
        """Outputs whose values are all below TINY: untrained-looking, judged by their scale."""
        vacuous = {v.output for v in self.vacuous}
        return sorted({c.output for c in self.comparisons
                       if 0 < c.scale < TINY and c.output not in vacuous})

    @property
    def status(self) -> str:
        if not self.compared:
            return "FAILED"
        if self.tiny and not self.vacuous:
            return "PASSED (tiny outputs, judged by their own scale)"
        if self.vacuous:
            return "PASSED (vacuous, accepted)" if self.allow_vacuous else "VACUOUS"
        return "PASSED"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "result": self.status, "tiny": self.tiny,
                "references": self.references,
                "samples": self.samples, "seed": self.seed, "notes": self.notes,
                "comparisons": [c.to_dict() for c in self.comparisons],
                "vacuous": [v.to_dict() for v in self.vacuous],
                **({"batch_sizes": self.batch_sizes} if self.batch_sizes else {})}

    def format(self) -> str:
        lines = [f"{'output':<12} {'reference':<12} {'scaled':>9} {'max abs':>9} "
                 f"{'scale':>9} {'cosine':>10} {'SNR dB':>7}  {'worst at':<14} result"]
        for c in self.comparisons:
            lines.append(f"{c.output[:12]:<12} {c.reference:<12} {c.scaled_error:9.2g} "
                         f"{c.max_abs_error:9.2g} {c.scale:9.2g} {c.cosine:10.7f} "
                         f"{c.snr_db:7.1f}  {str(c.worst_index):<14} "
                         f"{'PASSED' if c.passed else 'FAILED'}"
                         + (f" ({c.nan_count} NaN)" if c.nan_count else ""))
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"vacuous: output '{v.output}' {v.reason}. {VACUITY_HINT}"
                  for v in self.vacuous]
        lines += [f"tiny: output '{name}' is below {TINY:g} for every sample (random weights?); "
                  "it passes by its own scale, and trained weights or real data check more"
                  for name in self.tiny]
        return "\n".join(lines + [self._summary()])

    def _summary(self) -> str:
        failed = [c for c in self.comparisons if not c.passed]
        rules = sorted({_rule_text(c) for c in self.comparisons if c.reference != EXACT})
        fp32 = [r for r in self.references if r != EXACT]
        exact = (f", and within {EXACT_FACTOR}x their own error (at least {EXACT_FLOOR:g}) "
                 f"against {EXACT}" if EXACT in self.references else "")
        sizes = (f", batch sizes {', '.join(map(str, self.batch_sizes))}"
                 if self.batch_sizes else "")
        return (f"validation {self.status}: {len(self.comparisons) - len(failed)}/"
                f"{len(self.comparisons)} comparisons within {'; '.join(rules)} against "
                f"{', '.join(fp32)}{exact} ({self.samples} sample"
                f"{'s' if self.samples > 1 else ''}, seed {self.seed}{sizes})")


def _rule_text(c: Comparison) -> str:
    parts = [] if c.max_error is None else [f"scaled error {c.max_error:g}"]
    if c.atol is not None or c.rtol is not None:
        parts.append(f"atol {c.atol or 0:g} rtol {c.rtol or 0:g}")
    return ", ".join(parts) or "exact match"


def find_vacuous(outputs: list[str], per_sample: list[Arrays], max_error: float,
                 atol: dict[str, float | None]) -> list[Vacuity]:
    """The outputs whose reference values cannot tell a right package from a wrong one: all
    zero (or not finite), smaller than the absolute tolerance, or (with 2+ samples of different
    inputs) moving by less than VACUITY_FACTOR times the error bound between samples."""
    found = []
    for i, name in enumerate(outputs):
        values = [np.asarray(sample[i], dtype=np.float64) for sample in per_sample]
        finite = [v[np.isfinite(v)] for v in values]
        scale = max((float(np.abs(v).max()) for v in finite if v.size), default=0.0)
        if not any(v.size for v in finite) and any(v.size for v in values):
            found.append(Vacuity(name, "is NaN or infinite for every input", scale, None))
            continue
        if scale == 0.0:
            found.append(Vacuity(name, "is zero for every input", scale, None))
            continue
        if atol.get(name) is not None and atol[name] >= scale:
            found.append(Vacuity(name, f"is at most {scale:.3g}, within --atol {atol[name]:g}",
                                 scale, None))
            continue
        if len(values) < 2 or any(v.shape != values[0].shape for v in values):
            continue
        spread = max(float(np.nan_to_num(np.abs(v - values[0])).max()) for v in values) / scale
        if spread <= VACUITY_FACTOR * max_error:
            found.append(Vacuity(
                name, f"does not depend on the input (it moves by {spread:.2g} of its scale "
                f"{scale:.3g} between {len(values)} samples)", scale, spread))
    return found


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


def onnxruntime_backend(package: Package, model: Path | bytes | None = None,
                        optimized: bool = True) -> Callable[[Arrays], Arrays]:
    """ONNX Runtime on the package's model.onnx (or on ``model``: a file, or a serialized
    ModelProto); ``optimized`` False runs it without graph optimizations."""
    session = onnxruntime_session(package.path / "model.onnx" if model is None else model,
                                  optimized=optimized)
    names = [i.name for i in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays, strict=True)))


def torchscript_backend(package: Package, model: Path) -> Callable[[Arrays], Arrays]:
    load_recorded_libraries(package)
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


def _quietly(make, *args):
    """``make(*args)``, or None where that fails (a reference that cannot run in float64)."""
    try:
        return make(*args)
    except Exception:
        return None


def load_recorded_libraries(package: Package) -> None:
    """Load the --torch-library files the package was compiled with, where they still are
    (the reference model may call their operators)."""
    recorded = package.manifest["model"].get("torch_libraries", [])
    load_torch_libraries(p for p in recorded if Path(p).is_file())


def _exported_program(package: Package, notes: list[str]):
    """The torch.export program a .pt2 package was compiled from, if it is still there."""
    if package.manifest["model"]["format"] != "torch.export":
        return None
    compiled = compiled_model_file(package, "torch.export")
    if compiled is not None:
        load_recorded_libraries(package)
        return load_model(compiled).module
    notes.append("torch.export reference skipped: the compiled model file is not at "
                 f"{package.manifest['compile_options']['model']}")
    return None


def model_references(package: Package, notes: list[str],
                     options: ValidationOptions | None = None) -> dict:
    """The model file the package was compiled from (or --model) as references, by name."""
    return _model_references(package, options or ValidationOptions(), notes)[0]


def _model_references(package: Package, options: ValidationOptions, notes: list[str]):
    """(references by name, a maker of the float64 reference or None)."""
    references = {}
    make64 = None  # the torch reference in float64, with weights rounded for a seed (float64.py)
    model = _torchscript_model(package, options, notes)
    if model is not None:
        references["torchscript"] = torchscript_backend(package, model)
        if sha256_of(model) == package.manifest["model"]["sha256"]:  # not another model
            make64 = partial(_quietly, torchscript_float64, model)
    program = _exported_program(package, notes)
    if program is not None:
        from ..frontends.exported import run_exported

        references["torch.export"] = lambda arrays: run_exported(program, arrays)
        make64 = partial(_quietly, exported_float64, program)
    return references, make64


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
    options.check()
    unknown = set(options.tolerances) - {s.name for s in package.outputs}
    if unknown:
        raise DeploytoolError(f"--tol names unknown output(s) {', '.join(sorted(unknown))}",
                              f"Use one of {', '.join(s.name for s in package.outputs)}")
    notes: list[str] = []
    references = {}
    if (package.path / "model.onnx").is_file():  # not on the torch.export route
        references["onnxruntime"] = onnxruntime_backend(package)
    found, make64 = _model_references(package, options, notes)
    references.update(found)
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
        model_ranges = {k: tuple(v) for k, v in package.manifest.get("input_ranges", {}).items()}
        samples = [make_inputs(package.inputs, options.seed + k, options.ranges,
                               {sym: size for sym in symbol_bounds(package.inputs)},
                               model_ranges)
                   for size in batch_sizes or [1] for k in range(options.samples)]
    worst: dict[tuple[str, str], Comparison] = {}
    first_reference: list[Arrays] = []
    runs = [(native(package, arrays), {name: run(arrays) for name, run in references.items()})
            for arrays in samples]
    exact = float64_results(make64 and make64(None), samples, len(package.outputs))
    # one float64 copy at a time: tv_fcn peaked at 3.1 GiB with four, 2.6 so, 2.1 without
    rounded = [float64_results(make64(seed), samples, len(package.outputs))
               for seed in range(ROUNDED_DRAWS if exact else 0)]
    fp32_errors = fp32_error(exact, [r for _, r in runs], rounded)
    bounds = _error_bounds(package, runs, options, notes, fp32_errors)
    exact_compared = False
    for (actual, expected_by), sample_bounds in zip(runs, bounds, strict=True):
        first_reference.append(next(iter(expected_by.values())))
        for ref_name, expected in expected_by.items():
            for spec, a, r in zip(package.outputs, actual, expected, strict=True):
                atol, rtol = options.tolerance(spec.name)
                c = compare(spec.name, ref_name, np.asarray(a), np.asarray(r), atol, rtol,
                            sample_bounds[spec.name])
                key = (spec.name, ref_name)
                if key not in worst or _badness(c) > _badness(worst[key]):
                    worst[key] = c
    for k, (actual, expected_by) in enumerate(runs if exact is not None else []):
        for i, spec in enumerate(package.outputs):
            if not faithful(exact[k][i], [e[i] for e in expected_by.values()]):
                continue  # not a float output, or float64 computes something else there
            bound = max(EXACT_FLOOR, EXACT_FACTOR * fp32_errors[k][i],
                        options.max_error if options.max_error > DEFAULT_MAX_ERROR else 0.0)
            c = compare(spec.name, EXACT, np.asarray(actual[i]), np.asarray(exact[k][i]),
                        max_error=bound)
            exact_compared = True
            key = (spec.name, EXACT)
            if key not in worst or _badness(c) > _badness(worst[key]):
                worst[key] = c
    names = [s.name for s in package.outputs]
    per_size = len(samples) // max(1, len(batch_sizes or [1]))
    vacuous = find_vacuous(names, first_reference[:per_size], options.max_error,
                           {n: options.tolerance(n)[0] for n in names})
    if per_size < 2:
        notes.append("one sample: whether the outputs depend on the input is not checked")
    return ValidationReport(list(worst.values()), [*references, *[EXACT] * exact_compared],
                            1 if options.inputs_dir is not None else options.samples,
                            options.seed, notes, batch_sizes, vacuous, options.allow_vacuous)


def _error_bounds(package: Package, runs, options: ValidationOptions, notes: list[str],
                  fp32_errors: list[list[float]] | None = None) -> list[dict[str, float]]:
    """For each sample, each output's bound on the scaled error: ``max_error``, widened where
    fp32 itself is less accurate (rounding grows with a model's depth and its weights' scale):

    - to FP32_ERROR_FACTOR times the worst fp32 reference's own error against float64 on that
      sample (``fp32_errors``, see float64.py): the package may be twice as far from the exact
      result as that reference, and the reference is that far again;
    - to REFERENCE_SPREAD_FACTOR times the references' largest difference from each other, at
      most MAX_LOOSENING times ``max_error`` (without a float64 run, it is the only estimate).
    A package may then differ from a reference about as much as fp32 implementations do."""
    spreads = [max(_spread(expected_by, i, spec.name) for _, expected_by in runs)
               for i, spec in enumerate(package.outputs)]
    bounds = []
    widest: dict[str, tuple[float, str]] = {}
    for k in range(len(runs)):
        sample = {}
        for i, spec in enumerate(package.outputs):
            spread = spreads[i]
            fp32 = fp32_errors[k][i] if fp32_errors else 0.0
            widened = min(REFERENCE_SPREAD_FACTOR * spread, MAX_LOOSENING * options.max_error)
            sample[spec.name] = max(options.max_error, widened, FP32_ERROR_FACTOR * fp32)
            why = (f"the fp32 references differ from float64 by up to {fp32:.2g}"
                   if FP32_ERROR_FACTOR * fp32 >= widened
                   else f"the references differ by {spread:.2g}")
            if sample[spec.name] > widest.get(spec.name, (options.max_error, ""))[0]:
                widest[spec.name] = (sample[spec.name], why)
        bounds.append(sample)
    for name, (bound, why) in widest.items():
        notes.append(f"output '{name}': {why} of its scale on some samples, so its bound there "
                     f"is up to {bound:.2g}")
    return bounds


def _spread(expected_by: dict[str, Arrays], index: int, name: str) -> float:
    """How far the references' output ``index`` differs from the first reference's, scaled."""
    arrays = [np.asarray(e[index], dtype=np.float64) for e in expected_by.values()]
    return max([compare(name, "", other, arrays[0]).scaled_error
                for other in arrays[1:] if other.shape == arrays[0].shape] or [0.0])


def _badness(c: Comparison) -> tuple:
    """Orders comparisons so the report keeps each output's worst sample."""
    return (not c.passed, c.scaled_error, c.min_atol, c.max_abs_error)


def localize_options(report: ValidationReport, options: ValidationOptions
                     ) -> ValidationOptions:
    """The options ``--localize`` compares each cut with. Where the package failed only against
    the float64 result, within the bound on the references, each cut is held to half the
    package's error there (at least EXACT_FLOOR): a wrong layer whose effect a LayerNorm
    shrinks to 1.6e-5 at the output (BERT) differs by 1e-3 at the layer, and every cut after
    the LayerNorm by more than that half, where the bound on the references passed them all."""
    failed = [c for c in report.comparisons if not c.passed]
    if not failed or any(c.reference != EXACT for c in failed):
        return options
    worst = max(c.scaled_error for c in failed)
    return replace(options, max_error=max(EXACT_FLOOR, min(options.max_error, worst / 2)))


def failure_summary(report: ValidationReport) -> str:
    """One line on why a report did not pass: the worst comparison, or the vacuous outputs."""
    failed = [c for c in report.comparisons if not c.passed]
    if failed:
        c = max(failed, key=lambda c: (c.nan_count > 0, c.scaled_error, c.min_atol))
        if c.nan_expected:
            return (f"{c.reference} itself gives NaN for output '{c.output}' ({c.nan_expected} "
                    f"value{'s' if c.nan_expected > 1 else ''}; the package "
                    f"{c.nan_actual}), so the model computes NaN (NaN weights?)")
        if c.nan_actual:
            return (f"output '{c.output}' of the package holds {c.nan_actual} NaN where "
                    f"{c.reference} has finite values")
        return (f"output '{c.output}' differs from {c.reference} by up to {c.max_abs_error:.3g}"
                f", {c.scaled_error:.3g} of its scale {c.scale:.3g} ({_rule_text(c)})")
    if not report.comparisons:
        return "no reference could run"
    return "; ".join(f"output '{v.output}' {v.reason}" for v in report.vacuous)


def failure_advice(report: ValidationReport) -> str:
    """What to do about a report that did not pass."""
    nan = [c for c in report.comparisons if not c.passed and c.nan_count]
    if any(c.nan_expected for c in nan):
        return ("Check the model's weights and buffers for NaN (torch.isnan), and its inputs: "
                "validate with --range NAME:LO:HI or --inputs DIR if NaN comes from the data")
    if nan:
        return ("Run deploytool validate PACKAGE --localize to find the first layer that gives "
                "NaN, and report it with the model attached")
    if not report.compared:
        return ("Run deploytool validate PACKAGE --localize to find the first layer that "
                "differs (compile with --allow-mismatch to keep the package), or loosen "
                "--max-error if the difference is acceptable")
    return VACUITY_HINT


def record_validation(package: Package, report: ValidationReport | None, status: str) -> None:
    """Store the outcome in the manifest: passed, failed, skipped or pending."""
    entry = {"status": status}
    if report is not None:
        entry.update(report.to_dict())
    package.manifest["validation"] = entry
    package.save_manifest()


def write_report_json(report: ValidationReport, path: Path) -> None:
    try:
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    except OSError as err:
        raise DeploytoolError(f"cannot write the report to {path} ({os.strerror(err.errno or 0)})",
                              "Pass a writable --json path") from err
