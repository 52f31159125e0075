"""The deploytool command line: parses arguments, calls the core API, prints."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import DeploytoolError


class Group(click.Group):
    """Prints a DeploytoolError as one line, with its exit code, instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeploytoolError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(err.exit_code)


def _input_specs(ctx, param, values):
    from .tensors import parse_input_spec

    try:
        return [parse_input_spec(v) for v in values] or None
    except DeploytoolError as err:
        raise click.BadParameter(str(err)) from err


def _duration(ctx, param, value):
    from .tuning import parse_duration

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
def main():
    """deploytool: compile PyTorch models into Python-free packages with Apache TVM."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="cpu", show_default=True,
              help="A name in targets/, a JSON file, or inline JSON.")
@click.option("--input", "-i", "inputs", multiple=True, callback=_input_specs,
              metavar="NAME:SHAPE:DTYPE", help="An input, e.g. x:1x512:float32 (repeatable).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Package folder [default: artifacts/<model name>].")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--archive", is_flag=True, help="Also write <output>.tar.gz.")
@click.option("--tune", is_flag=True, help="Tune with MetaSchedule first (see deploytool tune).")
@_tuning_options
def compile(model, target, inputs, output, force, archive, tune, trials, time_budget, db):
    """Compile MODEL (TorchScript .pt or .onnx) into a package for TARGET.

    Kernels found in the tuning database get their tuned schedules; the others get the default
    schedule.
    """
    from .compiler import CompileOptions, compile_model
    from .tuning import TuneSettings

    options = CompileOptions(model=model, target=target, inputs=inputs, output=output,
                             force=force, archive=archive, tune=tune,
                             tuning=TuneSettings(trials=trials, time_budget=time_budget, db=db))
    click.echo(options.display())
    package = compile_model(options, log=click.echo)
    click.echo(f"package written to {package.path}" + (" (and .tar.gz)" if archive else ""))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="cpu", show_default=True,
              help="A name in targets/, a JSON file, or inline JSON.")
@click.option("--input", "-i", "inputs", multiple=True, callback=_input_specs,
              metavar="NAME:SHAPE:DTYPE", help="An input, e.g. x:1x512:float32 (repeatable).")
@_tuning_options
@click.option("--rpc-tracker", metavar="HOST:PORT",
              help="Measure trials on boards registered with this TVM RPC tracker.")
@click.option("--rpc-key", metavar="KEY", help="The boards' key at the tracker.")
@click.option("--rpc", metavar="HOST:PORT", help="Measure trials on this single TVM RPC server.")
def tune(model, target, inputs, trials, time_budget, db, rpc_tracker, rpc_key, rpc):
    """Tune every kernel of MODEL with MetaSchedule into the tuning database.

    Trials run in separate processes with a time-out. Ctrl-C stops after the current batch and
    keeps every record measured; tuning again resumes from them. A later compile for the same
    target uses the records.
    """
    from .targets import load_target
    from .tuning import TuneOptions, TuneSettings, tune_model

    options = TuneOptions(model=model, target=target, inputs=inputs,
                          settings=TuneSettings(trials=trials, time_budget=time_budget, db=db,
                                                rpc_tracker=rpc_tracker, rpc_key=rpc_key,
                                                rpc=rpc))
    click.echo(options.display(load_target(target)))
    result = tune_model(options, log=click.echo)
    click.echo(result.table())
    stopped = f" (stopped: {result.stopped})" if result.stopped else ""
    click.echo(f"{result.trials} trials in {result.seconds:.0f} s{stopped}; "
               f"records in {result.db}")


@main.command()
def targets():
    """List the targets in targets/."""
    from .targets import list_targets

    for spec in list_targets():
        click.echo(f"{spec.name:<16} {spec.arch:<8} {spec.description}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
def inspect(path):
    """Describe a .pt, an .onnx or a package folder."""
    from .inspection import describe

    click.echo(describe(path))


@main.command()
@click.argument("name", type=click.Choice(["mlp", "cnn"]))
@click.option("--output", "-o", type=click.Path(path_type=Path), help="[default: NAME.pt]")
def example(name, output):
    """Write a built-in example model as TorchScript with its input shapes."""
    from .examples import write_example

    path = write_example(name, output or Path(f"{name}.pt"))
    click.echo(f"wrote {path}")
