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
    """Compile MODEL (TorchScript .pt, .onnx or torch.export .pt2) into a package for TARGET."""
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
