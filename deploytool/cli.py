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
def compile(model, target, inputs, output, force, archive):
    """Compile MODEL (TorchScript .pt or .onnx) into a package for TARGET."""
    from .compiler import CompileOptions, compile_model

    options = CompileOptions(model=model, target=target, inputs=inputs, output=output,
                             force=force, archive=archive)
    click.echo(options.display())
    package = compile_model(options, log=click.echo)
    click.echo(f"package written to {package.path}" + (" (and .tar.gz)" if archive else ""))


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


@main.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--model", type=click.Path(path_type=Path),
              help="The TorchScript file the package was compiled from, for --compare "
                   "torchscript [default: the path its manifest records, if still there].")
@click.option("--compare", default="", metavar="BACKEND,...",
              help="Also run these on the same inputs: onnxruntime, torchscript.")
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
def bench(package, model, compare, warmup_ms, min_iters, min_seconds, threads, rounds,
          json_path):
    """Measure PACKAGE's latency and memory through its native runner (no Python in the loop),
    optionally side by side with ONNX Runtime and TorchScript. The results go into the manifest."""
    from .bench import BenchOptions, bench_package, format_table, parse_compare

    options = BenchOptions(package=package, model=model, compare=parse_compare(compare),
                           warmup_ms=warmup_ms, min_iters=min_iters, min_seconds=min_seconds,
                           threads=threads, rounds=rounds, json=json_path)
    options.check()
    click.echo(options.display())
    result = bench_package(options, log=click.echo)
    click.echo("\n" + format_table(result))
    click.echo(f"\nstored in {result.options.package / 'manifest.json'} (benchmarks)"
               + (f" and {json_path}" if json_path else ""))
