"""The deploytool command line: parses arguments, calls the core API, prints."""

from __future__ import annotations

import atexit
import json
import signal
import sys
import threading
from pathlib import Path

import click

from .common import DISK_FULL, disk_full_error, note_interrupt, was_interrupted, watch_ctrl_c
from .errors import DeploytoolError, UsageError
from .precision import PRECISIONS
from .verify import DEFAULT_MAX_ERROR


class Group(click.Group):
    """Prints a DeploytoolError as one line, with its exit code, instead of a traceback; a
    Ctrl-C exits 130 with one line, whatever error a library turned it into; a full disk is
    one line too."""

    def invoke(self, ctx):
        previous = signal.getsignal(signal.SIGINT)
        note_interrupt(False)
        watch_ctrl_c()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            _exit_interrupted(err)
        except DeploytoolError as err:
            if was_interrupted():
                _exit_interrupted(err)
            click.echo(f"Error: {err}", err=True)
            _echo_notes(err)
            sys.exit(err.exit_code)
        except OSError as err:
            if was_interrupted():
                _exit_interrupted(err)
            if err.errno not in DISK_FULL:
                raise
            click.echo(f"Error: {disk_full_error(err)}", err=True)
            sys.exit(1)
        except Exception as err:
            if was_interrupted():  # e.g. TVM's RuntimeError('') for a Ctrl-C in its C++ code
                _exit_interrupted(err)
            raise
        finally:
            note_interrupt(False)  # a later command in this process starts afresh
            if previous is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)


def _exit_interrupted(err: BaseException) -> None:
    """Ctrl-C: one line, the notes (a --keep-temps folder), exit 130 (128 + SIGINT)."""
    click.echo("Error: interrupted (Ctrl-C)", err=True)
    _echo_notes(err)
    sys.exit(130)


def _echo_notes(err: BaseException) -> None:
    """The notes the core added to an error (e.g. "scratch folder kept at PATH"), one a line."""
    for note in getattr(err, "__notes__", ()):
        click.echo(note, err=True)


def _input_specs(ctx, param, values):
    from .tensors import parse_input_spec

    try:
        return [parse_input_spec(v) for v in values] or None
    except DeploytoolError as err:
        raise click.BadParameter(str(err)) from err


def _duration(ctx, param, value):
    from .tuning.search import parse_duration

    try:
        return parse_duration(value) if value else None
    except DeploytoolError as err:
        raise click.BadParameter(str(err)) from err


def _tuning_options(command):
    """--trials, --time-budget and --db, shared by tune and compile."""
    command = click.option("--db", type=click.Path(path_type=Path),
                           help="Tuning database folder [default: "
                                "artifacts/tuning/<target>-<cpu>].")(command)
    command = click.option("--time-budget", callback=_duration, metavar="DURATION",
                           help="Stop tuning after this long, e.g. 90s, 20m, 1h.")(command)
    return click.option("--trials", type=click.IntRange(min=1),
                        help="Total measured trials [default: 64 per kernel].")(command)


@click.group(cls=Group)
@click.version_option(package_name="deploytool")
@click.pass_context
def main(ctx):
    """deploytool: compile PyTorch models into Python-free packages with Apache TVM."""
    if ctx.invoked_subcommand in ("tune", "compile"):  # before any library starts a thread
        from .messages import silence_teardown
        from .tuning.interrupts import hold_ctrl_c, release_ctrl_c

        atexit.register(silence_teardown)  # after the command's own output and error

        hold_ctrl_c()
        ctx.call_on_close(release_ctrl_c)  # also when the command fails before releasing it


def _triples(option: str, values, kinds) -> dict:
    """Parse NAME:A:B options (--tol NAME:ATOL:RTOL, --range NAME:LO:HI)."""
    parsed = {}
    for value in values:
        name, _, rest = value.partition(":")
        parts = rest.split(":")
        try:
            if not name or len(parts) != 2:
                raise ValueError
            parsed[name] = tuple(kind(p) for kind, p in zip(kinds, parts, strict=True))
        except ValueError:
            raise click.BadParameter(f"'{value}' is not NAME:NUMBER:NUMBER",
                                     param_hint=option) from None
    return parsed


def _torch_libraries(ctx, param, values):
    if values:
        from .frontends.custom_ops import load_torch_libraries

        load_torch_libraries(values)


torch_library_option = click.option(
    "--torch-library", multiple=True, type=click.Path(path_type=Path), expose_value=False,
    callback=_torch_libraries, metavar="PATH",
    help="A .so or .py that defines custom operators the model calls, loaded before the "
         "model (repeatable).")

verbose_option = click.option(
    "--verbose", "-v", is_flag=True,
    help="Print the warnings TVM and torch give, not only their count.")


def model_options(func):
    """MODEL, --target and --input: shared by compile and tune."""
    options = [
        click.argument("model", type=click.Path(path_type=Path)),
        click.option("--target", "-t", default="cpu", show_default=True,
                     help="A name in targets/, a JSON file, or inline JSON."),
        click.option("--input", "-i", "inputs", multiple=True, callback=_input_specs,
                     metavar="NAME:SHAPE:DTYPE",
                     help="An input, e.g. x:1x512:float32 or x:N<=32x512 (repeatable)."),
        torch_library_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def validation_options(func):
    """The options shared by compile and validate."""
    options = [
        click.option("--max-error", type=float, default=DEFAULT_MAX_ERROR, show_default=True,
                     help="Bound on each output's scaled error, max|out - ref| / max|ref|."),
        click.option("--atol", type=float,
                     help="Also require allclose: |out - ref| <= atol + rtol * |ref|."),
        click.option("--rtol", type=float, help="Relative tolerance of that allclose rule."),
        click.option("--tol", "tols", multiple=True, metavar="OUTPUT:ATOL:RTOL",
                     help="Tolerance for one output (repeatable)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the random inputs."),
        click.option("--range", "ranges", multiple=True, metavar="INPUT:LO:HI",
                     help="Value range of one input's random data, HI excluded (repeatable)."),
        click.option("--samples", type=int, default=3, show_default=True,
                     help="Number of random input samples (seeds SEED, SEED+1, ...)."),
        click.option("--allow-vacuous", is_flag=True,
                     help="Pass outputs that do not depend on the input (zero, or constant)."),
        click.option("--batch-sizes", callback=_sizes, metavar="N,N,...",
                     help="Sizes to validate a package with symbolic dimensions at "
                          "[default: 1, 2 and the upper bound]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _sizes(ctx, param, value):
    try:
        sizes = tuple(int(v) for v in value.split(",")) if value else ()
    except ValueError:
        sizes = (0,)
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"'{value}' is not positive sizes joined by commas (1,4,32)")
    return sizes


def _validation(max_error, atol, rtol, tols, seed, ranges, samples, allow_vacuous, batch_sizes=(),
                **extra):
    from .verify.validate import ValidationOptions

    options = ValidationOptions(max_error=max_error, atol=atol, rtol=rtol, seed=seed,
                                samples=samples, allow_vacuous=allow_vacuous,
                                batch_sizes=batch_sizes,
                                tolerances=_triples("--tol", tols, (float, float)),
                                ranges=_triples("--range", ranges, (float, float)), **extra)
    options.check()
    return options


@main.command()
@model_options
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Package folder [default: artifacts/<model name>].")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--archive", is_flag=True, help="Also write <output>.tar.gz.")
@click.option("--runtime-dir", type=click.Path(path_type=Path),
              help="libtvm_runtime.so and libtvm_ffi.so for the target (or their wheels) "
                   "[default: installed / fetched once into the cache].")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Check the package against ONNX Runtime and TorchScript.")
@click.option("--allow-mismatch", is_flag=True,
              help="Keep a package that fails validation (marked as not validated).")
@validation_options
@click.option("--java/--no-java", default=None,
              help="Build the Java binding (java/deploytool.jar, JNI library) or leave it out "
                   "[default: when a JDK is found].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Arithmetic of the package: int8 quantizes the model (static, calibrated) "
                   "and computes its convolutions and matrix products in integers; bf16 "
                   "computes them in bfloat16 with float32 sums (CPUs with AVX-512 BF16); fp16 "
                   "reads them in float16, with float32 sums (ARM CPUs).")
@click.option("--calibrate", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="int8 calibration data: one folder per sample holding <input>.npy for each "
                   "input (one input: a .npy file per sample) [default: 8 seeded random "
                   "samples, with a warning].")
@click.option("--tune", is_flag=True, help="Tune with MetaSchedule first (see deploytool tune).")
@_tuning_options
@click.option("--dump-ir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write the Relax module after import and after the build's pipeline, each "
                   "kernel's TIR, the VM bytecode and the generated code (assembly, LLVM IR, "
                   "CUDA) into DIR.")
@click.option("--keep-temps", is_flag=True,
              help="On failure keep the half-built package folder and print its path.")
@verbose_option
def compile(model, target, inputs, output, force, archive, runtime_dir, validate, allow_mismatch,
            max_error, atol, rtol, tols, seed, ranges, samples, allow_vacuous, batch_sizes, java,
            precision, calibrate, tune, trials, time_budget, db, dump_ir, keep_temps, verbose):
    """Compile MODEL (TorchScript .pt, .onnx or torch.export .pt2) into a package for TARGET.

    The package is validated against ONNX Runtime and the original model when this machine can
    run the target; a failing validation fails the compile unless --allow-mismatch is given.
    Kernels found in the tuning database get their tuned schedules; the others get the default
    schedule.
    """
    from .compiler import CompileOptions, compile_model
    from .tuning.interrupts import release_ctrl_c
    from .tuning.settings import TuneSettings

    if not tune:
        release_ctrl_c()  # main() held it in case of --tune

    options = CompileOptions(model=model, target=target, inputs=inputs, output=output,
                             force=force, archive=archive, runtime_dir=runtime_dir,
                             validate=validate,
                             allow_mismatch=allow_mismatch,
                             validation=_validation(max_error, atol, rtol, tols, seed, ranges,
                                                    samples, allow_vacuous, batch_sizes),
                             java=java, tune=tune,
                             tuning=TuneSettings(trials=trials, time_budget=time_budget, db=db),
                             dump_ir=dump_ir, keep_temps=keep_temps, verbose=verbose,
                             precision=precision, calibrate=calibrate)
    click.echo(options.display())
    package = compile_model(options, log=click.echo)
    click.echo(f"package written to {package.path}" + (" (and .tar.gz)" if archive else ""))


@main.command()
@model_options
@_tuning_options
@click.option("--rpc-tracker", metavar="HOST:PORT",
              help="Measure trials on boards registered with this TVM RPC tracker.")
@click.option("--rpc-key", metavar="KEY", help="The boards' key at the tracker.")
@click.option("--rpc", metavar="HOST:PORT", help="Measure trials on this single TVM RPC server.")
@verbose_option
def tune(model, target, inputs, trials, time_budget, db, rpc_tracker, rpc_key, rpc, verbose):
    """Tune every kernel of MODEL with MetaSchedule into the tuning database.

    Trials run in separate processes with a time-out. Ctrl-C stops after the current batch and
    keeps every record measured; tuning again resumes from them. A later compile for the same
    target uses the records.
    """
    from .messages import Messages, collected
    from .targets import load_target
    from .tuning.search import TuneOptions, tune_model
    from .tuning.settings import TuneSettings

    options = TuneOptions(model=model, target=target, inputs=inputs,
                          settings=TuneSettings(trials=trials, time_budget=time_budget, db=db,
                                                rpc_tracker=rpc_tracker, rpc_key=rpc_key,
                                                rpc=rpc))
    click.echo(options.display(load_target(target)))
    messages = Messages()
    try:
        with collected() as messages:
            result = tune_model(options, log=click.echo)
    finally:
        messages.report(click.echo, verbose)
    click.echo(result.table())
    stopped = f" (stopped: {result.stopped})" if result.stopped else ""
    click.echo(f"{result.trials} trials in {result.seconds:.0f} s{stopped}; "
               f"records in {result.db}")


@main.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--model", type=click.Path(path_type=Path),
              help="The TorchScript model [default: the compiled file, if unchanged].")
@torch_library_option
@validation_options
@click.option("--inputs", "inputs_dir", type=click.Path(path_type=Path),
              help="A folder of <input name>.npy files to use instead of random data.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the report as JSON.")
@click.option("--localize", is_flag=True,
              help="When an output differs, find the first layer that differs and name it.")
@click.option("--record", is_flag=True,
              help="Store the outcome in the package's manifest.json (its validation status); "
                   "without it the package is only read.")
def validate(package, model, max_error, atol, rtol, tols, seed, ranges, samples, allow_vacuous,
             batch_sizes, inputs_dir, json_path, localize, record):
    """Run PACKAGE (natively), ONNX Runtime and TorchScript on the same inputs and compare.

    Exit 0 only if every output of every sample is within tolerance of every reference. The
    package is checked against its manifest's sha256 digests first, and left unchanged unless
    --record is given.
    """
    from .package.manifest import load_package, verify_files
    from .verify.accuracy import is_reduced, seeded_samples, validate_reduced_package
    from .verify.inputs import read_inputs_dir
    from .verify.validate import validate_package

    options = _validation(max_error, atol, rtol, tols, seed, ranges, samples, allow_vacuous,
                          batch_sizes, model=model, inputs_dir=inputs_dir)
    if model is not None and not model.is_file():
        raise DeploytoolError(f"model file {model} not found", "Check the --model path")
    pkg = load_package(package)
    verify_files(pkg)
    if is_reduced(pkg):  # judged by its accuracy against the float32 model
        given = [read_inputs_dir(inputs_dir, pkg.inputs)] if inputs_dir else []
        report = validate_reduced_package(pkg, seeded_samples(pkg, options), given)
        click.echo(report.format())
        _report_outcome(pkg, report, json_path, record)
        if not report.passed:
            raise DeploytoolError("validation FAILED: the package's accuracy is below the "
                                  "thresholds above", "Recompile it with --calibrate DIR of "
                                  "real data, or with --precision fp32")
        return
    report = validate_package(pkg, options)
    click.echo(report.format())
    if localize and not report.compared:
        from .verify.localize import localize_package
        from .verify.validate import localize_options

        found = localize_package(pkg, localize_options(report, options), log=click.echo)
        click.echo(found.format())
    _report_outcome(pkg, report, json_path, record)
    if not report.passed:
        from .verify.validate import failure_advice, failure_summary

        raise DeploytoolError(f"validation {report.status}: {failure_summary(report)}",
                              "See the report above. " + failure_advice(report))


def _report_outcome(pkg, report, json_path, record) -> None:
    """--json and --record of deploytool validate."""
    from .verify.validate import record_validation, write_report_json

    if json_path:
        write_report_json(report, json_path)
    if record:
        record_validation(pkg, report, "passed" if report.passed else "failed")


@main.command()
def targets():
    """List the targets in targets/."""
    from .targets import list_targets

    for spec in list_targets():
        click.echo(f"{spec.name:<16} {spec.arch:<8} {spec.description}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@torch_library_option
def inspect(path):
    """Describe a .pt, an .onnx or a package folder."""
    from .inspection import describe

    click.echo(describe(path))


@main.command()
@click.argument("name", type=click.Choice(["mlp", "cnn"]))
@click.option("--output", "-o", type=click.Path(path_type=Path), help="[default: NAME.pt]")
def example(name, output):
    """Write a built-in example model as TorchScript with its input shapes."""
    from .testing.examples import write_example

    path = write_example(name, output or Path(f"{name}.pt"))
    click.echo(f"wrote {path}")


@main.command()
@click.argument("packages", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--together", is_flag=True,
              help="Load every PACKAGE in one process and run them at once, a thread each; "
                   "report each one's latency alone and together (--compare onnxruntime: the "
                   "same with ONNX Runtime sessions).")
@torch_library_option
@click.option("--model", type=click.Path(path_type=Path),
              help="The TorchScript file the package was compiled from, for --compare "
                   "torchscript [default: the path its manifest records, if still there].")
@click.option("--compare", default="", metavar="BACKEND,...",
              help="Also run these on the same inputs: onnxruntime, openvino, openvino-bf16, "
                   "torchscript, package:PATH (another package of the same model, e.g. its "
                   "fp32 build).")
@click.option("--warmup-ms", type=float, default=200, show_default=True,
              help="Warm-up per round before the timed runs.")
@click.option("--min-iters", type=int, default=50, show_default=True,
              help="Timed runs at least, all rounds together.")
@click.option("--min-seconds", type=float, default=3, show_default=True,
              help="Timed seconds at least, all rounds together.")
@click.option("--threads", type=int, help="Threads of every backend [default: the CPUs usable].")
@click.option("--rounds", type=int, default=3, show_default=True,
              help="Interleaved rounds, each a fresh process per backend.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the results, with every latency, to this JSON file.")
@click.option("--device", metavar="cuda:N",
              help="The GPU a CUDA package and the backends run on [default: cuda:0].")
@click.option("--per-kernel", is_flag=True,
              help="Then time each kernel inside the model (CPU packages): which layers cost.")
def bench(packages, together, model, compare, warmup_ms, min_iters, min_seconds, threads, rounds,
          json_path, device, per_kernel):
    """Measure PACKAGE's latency and memory through its native runner (no Python in the loop),
    optionally side by side with ONNX Runtime and TorchScript. The results go into the manifest
    (unless the package is read-only). With --together, several packages in one process."""
    if together:
        bench_together(packages, compare, warmup_ms, min_seconds, threads, json_path)
        return
    if len(packages) > 1:
        raise UsageError(f"{len(packages)} packages given without --together",
                         "Bench one package at a time, or pass --together to run them at once")
    package = packages[0]
    from .bench.timing import (
        BenchOptions,
        bench_package,
        format_kernels,
        format_table,
        parse_compare,
    )

    options = BenchOptions(package=package, model=model, compare=parse_compare(compare),
                           warmup_ms=warmup_ms, min_iters=min_iters, min_seconds=min_seconds,
                           threads=threads, rounds=rounds, json=json_path, device=device,
                           per_kernel=per_kernel)
    options.check()
    click.echo(options.display())
    result = bench_package(options, log=click.echo)
    click.echo("\n" + format_table(result))
    if result.kernels is not None:
        click.echo("\n" + format_kernels(result))
    stored = [f"{result.options.package / 'manifest.json'} (benchmarks)"] if result.stored else []
    stored += [str(json_path)] if json_path else []
    if stored:
        click.echo(f"\nstored in {' and '.join(stored)}")


def bench_together(packages, compare, warmup_ms, min_seconds, threads, json_path):
    """bench --together: every package alone, then all at once, in one process per backend."""
    from .bench.timing import parse_compare
    from .bench.together import check_together, format_together, run_worker

    backends = ["package", *parse_compare(compare)]
    check_together(packages, backends, threads)
    reports = []
    for backend in backends:
        click.echo(f"{backend}: {len(packages)} models alone, then together, "
                   f"{min_seconds:g} s each")
        reports.append(run_worker(backend, list(packages), threads or 0, min_seconds, warmup_ms))
    click.echo("\n" + format_together(reports))
    if json_path:
        json_path.write_text(json.dumps(reports, indent=1))
        click.echo(f"\nstored in {json_path}")
