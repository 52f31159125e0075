"""compile_model: TorchScript, ONNX or torch.export -> Relax -> target library -> package."""

from __future__ import annotations

import datetime
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import __version__
from .build.cpu_pipeline import schedule_build
from .build.dump import dump_summary, start_dump
from .build.half_rewrites import HALF_PRODUCTS, count_half_products, half_products
from .build.int8_rewrites import integer_products
from .build.library import build_library
from .common import Log, check_interrupt
from .errors import DeploytoolError, UsageError
from .frontends.custom_ops import loaded_libraries
from .frontends.dynamic import example_sizes
from .frontends.load import load_model, other_route, route_failure, to_onnx
from .frontends.model import OnnxModel
from .frontends.torchscript import data_dependence_explained, run_torchscript
from .importer.relax import import_model
from .messages import Messages, collected
from .package.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    Package,
    atomic_folder,
    copy_cpp_example,
    file_digests,
    write_test_vectors,
)
from .package.readme import write_readme
from .precision import check_precision, half_instructions, integer_instructions
from .precision.calibration import Calibration, calibration_samples
from .precision.quantize import activation_type, quantize_int8, scheme
from .schedules.metaschedule import tuning_target
from .schedules.products import grouped_lanes
from .targets import TargetSpec, load_target
from .tensors import TensorSpec
from .toolchains.cuda import check_toolchain, is_cuda, runtime_manifest
from .toolchains.emulation import can_run_target
from .toolchains.java import build_java, find_jdk
from .toolchains.native import build_native, check_compiler, tvm_runtime_libraries
from .tuning.interrupts import ctrl_c_stops_tuning
from .tuning.search import tune_module
from .tuning.settings import TuneSettings
from .verify.accuracy import (
    HALF_THRESHOLDS,
    HALF_VECTOR_BOUND,
    REFERENCE_ONNX,
    Thresholds,
    float32_reference,
    seeded_samples,
    validate_reduced_package,
)
from .verify.inputs import integer_ranges, make_inputs
from .verify.validate import (
    ValidationOptions,
    failure_advice,
    failure_summary,
    onnxruntime_backend,
    record_validation,
    run_native,
    validate_package,
)


@dataclass
class CompileOptions:
    """Every option of a compile, resolved; None means the default."""

    model: Path
    target: str = "cpu"
    inputs: list[TensorSpec] | None = None
    output: Path | None = None
    force: bool = False
    archive: bool = False
    tune: bool = False
    tuning: TuneSettings = field(default_factory=TuneSettings)
    runtime_dir: Path | None = None
    validate: bool = True
    allow_mismatch: bool = False
    validation: ValidationOptions = field(default_factory=ValidationOptions)
    java: bool | None = None  # None: build the Java binding when a JDK is present
    dump_ir: Path | None = None  # a folder for the IR and generated code (see build/dump.py)
    keep_temps: bool = False  # keep the scratch folder of a failed compile
    verbose: bool = False  # print the warnings collected, not only their count
    precision: str = "fp32"  # fp32, or int8 (see deploytool/precision)
    calibrate: Path | None = None  # int8 calibration samples; None: seeded ones, with a warning

    def output_dir(self) -> Path:
        return self.output or Path("artifacts") / self.model.stem

    def display(self) -> str:
        inputs = ", ".join(map(str, self.inputs)) if self.inputs else "from the model file"
        return (f"model   {self.model}\ntarget  {self.target}\ninputs  {inputs}\n"
                f"output  {self.output_dir()}{' (archive too)' if self.archive else ''}"
                + (f"\nprecision {self.precision}" if self.precision != "fp32" else "")
                + (f"\ncalibrate {self.calibrate}" if self.calibrate else "")
                + (f"\nruntime {self.runtime_dir}" if self.runtime_dir else "")
                + (f"\ndump-ir {self.dump_ir}" if self.dump_ir else "")
                + ("\ntemps   kept on failure" if self.keep_temps else ""))


@dataclass
class StageTimer:
    """Times named stages and reports each as it ends."""

    log: Log
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        check_interrupt()  # a Ctrl-C a library swallowed stops the compile here
        start = time.perf_counter()
        yield
        check_interrupt()
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
    options.validation.check()
    target: TargetSpec = load_target(options.target).resolved()
    check_precision(options.precision, target)
    if options.calibrate is not None and options.precision != "int8":
        raise UsageError("--calibrate gives int8 calibration data",
                         "Add --precision int8, or leave --calibrate out")
    if is_cuda(target):
        check_toolchain(target)  # nvcc and the CUDA runtime, before any heavy work
    destination = options.output_dir()
    check_destination(options, destination)
    check_compiler(target.cxx)  # the toolchain and runtime libraries first, before any heavy work
    runtime_libraries = tvm_runtime_libraries(target, options.runtime_dir, log)
    if options.java:
        find_jdk()  # fail before the long stages when --java was asked for and there is no JDK
    build_log: list[str] = []
    log = _teed(log, build_log)
    with atomic_folder(destination, options.force, options.keep_temps,
                       archive=options.archive) as scratch:
        messages = Messages()  # rebound below; empty if the collection could not start
        try:
            with collected() as messages:
                package = _compile_into(scratch, options, target, runtime_libraries, timer, log)
        finally:
            messages.report(log, options.verbose)
            _write_build_log(scratch, build_log, messages)
    return Package(destination, package.manifest)


def _compile_into(scratch: Path, options: CompileOptions, target: TargetSpec,
                  runtime_libraries, timer: StageTimer, log: Log) -> Package:
    """compile_model's stages, writing the package into ``scratch``."""
    # Ctrl-C's handling is set before the model's load starts threads (see the function).
    with ctrl_c_stops_tuning(log) if options.tune else nullcontext():
        with timer.stage("load"):
            source = load_model(options.model, options.inputs)
        with timer.stage("export"), data_dependence_explained(source):
            graph = to_onnx(source)
            if isinstance(graph, OnnxModel):  # kept in the package (and by --keep-temps)
                (scratch / "model.onnx").write_bytes(graph.proto.SerializeToString())
        calibration = None
        if options.precision == "int8":
            with timer.stage("quantize"):
                graph, calibration = _quantized(graph, options, target, scratch, log)
        with timer.stage("import"), data_dependence_explained(source):
            # a quantized model has no second route: it would be the float32 model
            graph, imported = (_import_on_a_route(source, graph, options.precision)
                               if calibration is None else (graph, import_model(graph)))
            if options.dump_ir:
                start_dump(options.dump_ir, imported.mod)
        tuned = None
        if options.tune:
            with timer.stage("tune"):
                tuned = tune_module(imported.mod, target, options.tuning, log)
                log(tuned.table())
    for note in imported.notes:
        log(f"  note: {note}")
    with timer.stage("build"), data_dependence_explained(source):
        pipeline, tuning = schedule_build(target, options.tuning, tuned)
        graph, imported = _build_on_a_route(source, graph, imported, target, pipeline,
                                            scratch / "model.so", options.dump_ir,
                                            tuned is None and calibration is None,
                                            options.precision)
        if tuning:
            log(f"  schedules  {tuning.summary()}")
    if options.dump_ir:
        log(dump_summary(options.dump_ir))
    log(f"  route      {imported.route}")
    if not isinstance(graph, OnnxModel):  # re-traced: the package was not built from ONNX
        (scratch / "model.onnx").unlink(missing_ok=True)
    with timer.stage("package"):
        build_native(target, scratch, runtime_libraries, log)
        java = build_java(target, scratch, options.java, log)
        manifest = _manifest(options, target, source, imported, timer, tuning, java,
                             {k: list(v) for k, v in integer_ranges(graph).items()})
        manifest["precision"] = _precision_entry(options, target, calibration, imported.mod,
                                                 isinstance(graph, OnnxModel))
        package = Package(scratch, manifest)
        reduced = options.precision != "fp32"
        if not reduced:
            manifest["self_test"] = _write_test_vectors(package, source, options.validation)
        manifest["files"] = file_digests(scratch)
        manifest["file_sizes"] = {"model.so": (scratch / "model.so").stat().st_size}
        package.save_manifest()
        if reduced:  # its own outputs are the vectors: it runs first
            manifest["self_test"] = _write_test_vectors(package, source, options.validation,
                                                        target)
            manifest["files"] = file_digests(scratch)
            package.save_manifest()
        copy_cpp_example(scratch)
        write_readme(scratch, manifest)
    _validate(package, target, source, options, timer, log, calibration)
    return package


def _teed(log: Log, lines: list[str]) -> Log:
    """``log`` that also appends each line to ``lines``."""
    def both(line: str) -> None:
        lines.append(line)
        log(line)

    return both


def _write_build_log(scratch: Path, lines: list[str], messages: Messages) -> None:
    """build.log: the compile's output, then each warning collected (with its count)."""
    if not scratch.is_dir():
        return
    (scratch / "build.log").write_text("\n".join([*lines, *messages.lines()]) + "\n")


def check_destination(options: CompileOptions, destination: Path) -> None:
    """Refuse a destination that cannot be replaced: without --force any that exists; with it,
    one that is not a package (no manifest.json), or one that holds the model or another input
    of this compile (the replacement would delete them)."""
    if not (destination.exists() or destination.is_symlink()):
        return
    if not options.force:
        kind = "folder" if destination.is_dir() else "file (not a folder)"
        raise DeploytoolError(f"output {destination} already exists and is a {kind}",
                              "Pass --force to replace a package, or choose another with -o")
    if not destination.is_dir() or destination.is_symlink() \
            or not (destination / MANIFEST).is_file():
        raise DeploytoolError(f"--force replaces only a package, and {destination} is not one "
                              f"(no {MANIFEST})", "Remove it yourself, or choose another output "
                              "with -o")
    inside = destination.resolve()
    for label, path in (("the model", options.model), ("--runtime-dir", options.runtime_dir),
                        ("--db", options.tuning.db), ("--dump-ir", options.dump_ir)):
        if path is not None and Path(path).resolve().is_relative_to(inside):
            raise DeploytoolError(f"--force would delete {label} {path}, which is inside "
                                  f"{destination}", "Move it out first, or choose another "
                                  "output with -o")


def _imported(graph, precision: str):
    """The imported module of ``graph``, its products in half-width floats for ``precision``
    bf16 or fp16."""
    imported = import_model(graph)
    if precision in HALF_PRODUCTS:
        imported = replace(imported, mod=half_products(imported.mod, HALF_PRODUCTS[precision])[0])
    return imported


def _import_on_a_route(source, graph, precision: str):
    """Import ``graph``; where that fails, a TorchScript model takes its second route."""
    try:
        return graph, _imported(graph, precision)
    except DeploytoolError as err:
        graph = other_route(source, graph, route_failure(graph, err))
        try:
            return graph, _imported(graph, precision)
        except DeploytoolError as second:
            raise route_failure(graph, second) from second


def _build_on_a_route(source, graph, imported, target, pipeline, path, dump, may_switch: bool,
                      precision: str):
    """Build the library; where the build fails, a TorchScript model takes its second route
    (unless the schedules were tuned for this route's module: ``may_switch`` False)."""
    try:
        build_library(imported.mod, target, path, pipeline, dump)
        return graph, imported
    except DeploytoolError as err:
        if not may_switch:
            raise
        graph = other_route(source, graph, route_failure(graph, err))
        try:
            imported = _imported(graph, precision)
            build_library(imported.mod, target, path, pipeline, dump)
            return graph, imported
        except DeploytoolError as second:
            raise route_failure(graph, second) from second


def _manifest(options: CompileOptions, target: TargetSpec, source, imported, timer: StageTimer,
              tuning, java: dict, input_ranges: dict) -> dict:
    """The manifest of a new package; validation and benchmarks are filled in later."""
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {"name": source.name, "file": source.path.name, "sha256": source.sha256,
                  "format": source.format, "route": imported.route,
                  "notes": imported.notes, "torch_libraries": loaded_libraries()},
        "inputs": [s.to_dict() for s in imported.inputs],
        "input_ranges": input_ranges,
        "outputs": [s.to_dict() for s in imported.outputs],
        "target": {**target.to_dict(), "resolved_cpu": target.cpu},
        "runtime": {"arch": target.arch, "cpu_features": target.cpu_features(),
                    **runtime_manifest(target)},
        "versions": _versions(),
        "compile_options": {**asdict(options), "model": str(options.model),
                            "tuning": options.tuning.to_dict(),
                            "output": str(options.output_dir()),
                            "inputs": [str(s) for s in imported.inputs],
                            "runtime_dir": (str(options.runtime_dir)
                                            if options.runtime_dir else None),
                            "dump_ir": str(options.dump_ir) if options.dump_ir else None},
        "stage_seconds": timer.seconds,
        "validation": None,
        "tuning": tuning.to_dict() if tuning else None,
        "benchmarks": None,
        "java": java,
    }


def _write_test_vectors(package: Package, source, validation: ValidationOptions,
                        reduced: TargetSpec | None = None) -> dict:
    """The package's own test vectors: seeded inputs and the original model's outputs; for a
    reduced-precision package (``reduced``, its target), the package's own outputs where this
    machine runs it, else ONNX Runtime's on the same quantized model.

    The runner's self-test compares under allclose; without --atol its atol is the scaled-error
    bound times the smallest output's scale, so the self-test is as strict as validation.
    """
    ranges = {k: tuple(v) for k, v in package.manifest.get("input_ranges", {}).items()}
    arrays = make_inputs(package.inputs, validation.seed, validation.ranges,
                         example_sizes(package.inputs), ranges)  # one size of a symbolic dim
    if reduced is not None:
        return _reduced_test_vectors(package, arrays, reduced, validation)
    if source.format == "torchscript":
        reference, outputs = "torchscript", run_torchscript(source.module, arrays)
    elif source.format == "torch.export":
        from .frontends.exported import run_exported

        reference, outputs = "torch.export", run_exported(source.module, arrays)
    else:
        reference, outputs = "onnxruntime", onnxruntime_backend(package)(arrays)
    return _vectors(package, arrays, outputs, reference, validation, validation.max_error)


def _vectors(package: Package, arrays, outputs, reference: str, validation: ValidationOptions,
             bound: float) -> dict:
    """Write the test vectors; without --atol, the atol is ``bound`` times the smallest
    output's scale."""
    atol = validation.atol
    if atol is None:
        scales = [float(np.abs(o).max()) for o in outputs if o.size and np.abs(o).max() > 0]
        atol = bound * min(scales) if scales else 0.0
    return write_test_vectors(package.path, package.inputs, package.outputs, arrays, outputs,
                              reference, atol, validation.rtol or 0.0)


def _validate(package: Package, target: TargetSpec, source, options: CompileOptions,
              timer: StageTimer, log: Log, calibration: Calibration | None = None) -> None:
    """Validate against the references when this machine can run the target; record the result."""
    if not options.validate:
        log("  validation skipped (--no-validate): the package is not validated")
        record_validation(package, None, "skipped")
        return
    if not can_run_target(target):
        log(f"  validation pending: this machine cannot run {target.name} code; run "
            "bin/deploytool-run --self-test on the deployment machine")
        record_validation(package, None, "pending")
        return
    validation = options.validation
    if options.precision != "fp32":
        _validate_reduced(package, options, calibration, timer, log)
        return
    if source.format == "torchscript" and validation.model is None:
        validation = ValidationOptions(**{**validation.__dict__, "model": source.path})
    with timer.stage("validate"):
        report = validate_package(package, validation)
    for line in report.format().splitlines():
        log("    " + line)
    record_validation(package, report, "passed" if report.passed else "failed")
    if not report.passed and not options.allow_mismatch:
        raise DeploytoolError(f"validation {report.status}: {failure_summary(report)}",
                              failure_advice(report))


def _quantized(graph, options: CompileOptions, target: TargetSpec, scratch: Path, log: Log):
    """The int8 QDQ model of ``graph`` and its calibration; the float32 model is kept in the
    package as the accuracy reference."""
    if not isinstance(graph, OnnxModel):
        raise DeploytoolError(f"--precision int8 quantizes the model's ONNX export, and "
                              f"{options.model.name} imports without one ({graph.route})",
                              "Compile its TorchScript (.pt) or ONNX file instead")
    calibration = calibration_samples(graph.inputs, options.calibrate, options.validation.seed,
                                      options.validation.ranges, integer_ranges(graph))
    log(f"  calibrate  {calibration.source}")
    if calibration.seeded:
        log(f"  warning: {calibration.warning()}")
    (scratch / REFERENCE_ONNX).write_bytes(graph.proto.SerializeToString())
    quantized = quantize_int8(graph.proto, calibration, activation_type(target.arch))
    (scratch / "model.onnx").write_bytes(quantized.SerializeToString())
    return replace(graph, proto=quantized, route=f"{graph.route} -> int8 (QDQ)"), calibration


def _precision_entry(options: CompileOptions, target: TargetSpec, calibration, mod,
                     from_onnx: bool) -> dict:
    """The manifest's record of the package's precision."""
    if options.precision in HALF_PRODUCTS:
        half = HALF_PRODUCTS[options.precision]
        return {"mode": half.precision,
                f"{half.precision}_products": count_half_products(mod, half),
                "instructions": half_instructions(half.precision, target),
                "reference": "model.onnx" if from_onnx else "the model file",
                "thresholds": HALF_THRESHOLDS[half.precision].to_dict()}
    if calibration is None:
        return {"mode": "fp32"}
    _, products = integer_products(mod, grouped_lanes(tuning_target(target)))
    return {"mode": "int8", "scheme": scheme(activation_type(target.arch)),
            "integer_products": products,
            "instructions": integer_instructions(target),
            "calibration": {"source": calibration.source, "samples": len(calibration.samples),
                            "seeded": calibration.seeded, "warning": calibration.warning()},
            "reference": REFERENCE_ONNX, "thresholds": Thresholds().to_dict()}


def _reduced_test_vectors(package: Package, arrays, target: TargetSpec,
                          validation: ValidationOptions) -> dict:
    if can_run_target(target):
        reference, outputs = "package", run_native(package, arrays)
        bound = validation.max_error
    elif package.manifest["precision"]["mode"] == "int8":
        # the same integers in ONNX Runtime, up to a rounding step of its requantization
        reference, outputs = "onnxruntime-int8", onnxruntime_backend(package)(arrays)
        bound = 1e-2
    else:  # the float32 model, up to the half-width type's rounding
        reference, outputs = "fp32", float32_reference(package)(arrays)
        bound = HALF_VECTOR_BOUND
    return _vectors(package, arrays, outputs, reference, validation, bound)


def _validate_reduced(package: Package, options: CompileOptions,
                      calibration: Calibration | None, timer: StageTimer, log: Log) -> None:
    """Validate a reduced-precision package by its accuracy (see verify/accuracy.py)."""
    seeded = seeded_samples(package, options.validation)
    names = [s.name for s in package.inputs]
    calibrated = ([[sample[n] for n in names] for sample in calibration.samples]
                  if calibration is not None else [])
    with timer.stage("validate"):
        report = validate_reduced_package(package, seeded, calibrated)
    for line in report.format().splitlines():
        log("    " + line)
    package.manifest["validation"] = {"status": "passed" if report.passed else "failed",
                                      **report.to_dict()}
    package.save_manifest()
    if not report.passed and not options.allow_mismatch:
        failed = [a for a in report.agreements if not a.passed]
        raise DeploytoolError(
            f"validation FAILED: {len(failed)} of {len(report.agreements)} agreements below "
            f"their thresholds (worst: output '{failed[0].output}' against {failed[0].reference}"
            f", cosine {failed[0].cosine:.4f})",
            ("Calibrate on real data (--calibrate DIR), or keep" if calibration is not None
             else "Keep") + " the package with --allow-mismatch, or compile with --precision "
            "fp32")
