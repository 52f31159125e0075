"""Shared fixtures: example models saved as TorchScript, packages compiled from them once a
session, and a guard that fails a test which compiles without the ``slow`` marker."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploytool.compiler import CompileOptions, compile_model
from deploytool.frontends.load import load_model, to_onnx
from deploytool.importer.relax import import_relax
from deploytool.package.manifest import Package
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import write_example

# What compiles or tunes, by module: a test that calls one of these must be marked slow.
COMPILERS = {
    "deploytool.compiler": ("build_library",),
    "deploytool.build.library": ("build_library",),
    "tvm": ("compile", "build"),
    "tvm.relax": ("build",),
    "tvm.tirx": ("build",),
    "tvm.s_tir.meta_schedule": ("tune_tasks",),
}
AVX2_TARGET = {"kind": "llvm", "mcpu": "x86-64-v3"}  # 8-float vectors, on every x86 CI machine
_guards = pytest.MonkeyPatch()
_guarded: set[tuple[str, str]] = set()
_running: list[pytest.Item] = []


def _slow_only(function, name: str):
    @functools.wraps(function)
    def guarded(*args, **kwargs):
        test = _running[-1] if _running else None
        if test is not None and test.get_closest_marker("slow") is None:
            pytest.fail(f"{test.nodeid} calls {name} but is not marked slow: add "
                        "@pytest.mark.slow (make test-fast leaves out what compiles)",
                        pytrace=False)
        return function(*args, **kwargs)

    return guarded


def _guard_compilers() -> None:
    """Wrap every compiler of COMPILERS whose module is loaded (tvm loads lazily)."""
    for module_name, names in COMPILERS.items():
        module = sys.modules.get(module_name)
        for name in names:
            if module is not None and (module_name, name) not in _guarded:
                _guards.setattr(module, name, _slow_only(getattr(module, name),
                                                         f"{module_name}.{name}"))
                _guarded.add((module_name, name))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item):
    _guard_compilers()
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def pytest_unconfigure():
    _guards.undo()


def example_model(name: str, folder: Path) -> Path:
    """The example ``name`` ("mlp", "cnn") saved as ``folder/name.pt``, written once."""
    path = folder / f"{name}.pt"
    return path if path.exists() else write_example(name, path)


def relax_module(path: Path):
    """A model file's Relax module, as compile imports it (before fusing and scheduling)."""
    return import_relax(to_onnx(load_model(path)))


class PackageFactory:
    """Compiles each model, target and set of options once a session. A model is a path or
    the name of an example model; examples and packages share one folder, so a package's
    parent folder holds ``<example>.pt``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.packages: dict[str, Package] = {}
        self.logs: dict[Path, list[str]] = {}

    def __call__(self, model: str | Path, target: str = "cpu", **options) -> Package:
        path = self.model_path(model)
        key = repr((str(path), target, sorted(options.items())))
        if key not in self.packages:
            output = self.folder / f"{path.stem}-{len(self.packages)}"
            lines: list[str] = []
            self.packages[key] = compile_model(
                CompileOptions(model=path, target=target, output=output, **options),
                log=lines.append)
            self.logs[output] = lines
        return self.packages[key]

    def model_path(self, model: str | Path) -> Path:
        return model if isinstance(model, Path) else example_model(model, self.folder)

    def log(self, package: Package) -> list[str]:
        """The lines the compile of ``package`` logged."""
        return self.logs[package.path]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def compile_package(models_dir) -> PackageFactory:
    """``compile_package(model, target="cpu", **options) -> Package``, compiled once a session
    for each set of arguments (options are CompileOptions fields)."""
    return PackageFactory(models_dir)


@pytest.fixture(scope="session")
def mlp_pt(compile_package) -> Path:
    return compile_package.model_path("mlp")


@pytest.fixture(scope="session")
def cnn_pt(compile_package) -> Path:
    return compile_package.model_path("cnn")


@pytest.fixture(scope="session")
def mlp_package(compile_package) -> Package:
    return compile_package("mlp")


@pytest.fixture(scope="session")
def cnn_package(compile_package) -> Package:
    return compile_package("cnn")


def run_clean(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run with an empty environment: no PYTHONPATH, no venv on PATH, nothing inherited."""
    return subprocess.run(["env", "-i", *map(str, cmd)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def run_package(package_dir: Path, inputs: dict[str, np.ndarray], out_dir: Path,
                extra: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run a package's bin/deploytool-run on .npy inputs under env -i; return its outputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = []
    for name, array in inputs.items():
        path = out_dir / f"in_{name}.npy"
        np.save(path, array)
        args += ["--input", f"{name}={path}"]
    proc = run_clean([package_dir / "bin" / "deploytool-run", package_dir, *args,
                      "--output-dir", out_dir, *(extra or [])])
    assert proc.returncode == 0, proc.stderr
    return {p.stem: np.load(p) for p in out_dir.glob("*.npy") if not p.stem.startswith("in_")}


def build_c_program(source: Path, package_dir: Path, out_dir: Path) -> Path:
    """Compile a plain C test program (C11) against a package's C API; returns the executable."""
    exe = out_dir / source.stem
    build = subprocess.run(["gcc", "-std=c11", str(source), f"-I{package_dir}/include",
                            f"-L{package_dir}/lib", "-ldeploytool",
                            f"-Wl,-rpath,{package_dir}/lib", "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return exe


def copy_package(package_dir: Path, dest: Path) -> Path:
    shutil.copytree(package_dir, dest, symlinks=True)
    return dest


def residual_conv(channels: int, size: int, kernel: int = 3):
    """A residual block's convolution over size x size pixels: (model, inputs)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, kernel, 1, kernel // 2)

        def forward(self, x):
            return torch.relu(self.conv(x) + x)

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, channels, size, size))]


def depthwise(channels: int, size: int, stride: int = 1):
    """MobileNetV2's depthwise convolution, padded, with bias and ReLU6: (model, inputs)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels)

        def forward(self, x):
            return torch.clamp(self.conv(x), 0, 6)

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, channels, size, size))]


def grouped(channels: int, group_width: int, size: int, stride: int = 1):
    """RegNet's and ResNeXt's grouped 3x3 convolution of ``group_width`` channels a group,
    padded, with bias and ReLU: (model, inputs)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, stride, 1,
                                  groups=channels // group_width)

        def forward(self, x):
            return torch.relu(self.conv(x))

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, channels, size, size))]


def squeeze_excite(channels: int = 40, size: int = 28):
    """A convolution, then squeeze-and-excitation (a mean over the pixels, two 1x1 convolutions,
    a sigmoid gate): (model, inputs)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
            self.reduce = nn.Conv2d(channels, 8, 1)
            self.expand = nn.Conv2d(8, channels, 1)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            gate = torch.sigmoid(self.expand(torch.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
            return y * gate

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, channels, size, size))]


def residual_net():
    """A 3x3 convolution of 3 channels (padded: the zero point must pad), a depthwise one, a
    1x1 one with a residual add, a mean and a linear layer of 10 classes (padded to 16): every
    form the rewrite meets in a CNN."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pointwise = torch.nn.Conv2d(16, 16, 1)
            self.head = torch.nn.Linear(16, 10)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            y = y + self.pointwise(torch.relu(self.depthwise(y)))
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    return Net().eval()


def grouped_net():
    """Grouped 3x3 convolutions, as RegNetX's and ResNeXt's: groups of 16 channels (a vector of
    a tile each) and, with stride 2, of 32 (two vectors of one group), between 1x1 ones; and
    the input shape."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(32, 64, 1), torch.nn.ReLU(),
                               torch.nn.Conv2d(64, 64, 3, padding=1, groups=4), torch.nn.ReLU(),
                               torch.nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=2),
                               torch.nn.ReLU(), torch.nn.Conv2d(64, 32, 1)).eval(), (1, 32, 14, 14)


def attention_net():
    """Self-attention over 21 tokens in 2 heads of 16 (its scores' 21 columns a tile pads to
    32, its weighted sum's 21-term sums to pairs), between linear layers; and the input
    shape."""
    import torch

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(32, 96)
            self.out = torch.nn.Linear(32, 32)

        def forward(self, x):
            q, k, v = self.qkv(x).reshape(1, 21, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
            scores = torch.softmax(q @ k.transpose(-1, -2) * 0.25, -1)
            return self.out((scores @ v).transpose(1, 2).reshape(1, 21, 32))

    torch.manual_seed(0)
    return Attention().eval(), (1, 21, 32)


def groups_of_8_net():
    """A grouped 3x3 convolution of groups of 8 channels (RegNetY's) between 1x1 ones; and the
    input shape."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 32, 3, padding=1, groups=4), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 16, 1)).eval(), (1, 16, 10, 10)


def relax_calls(mod, *names: str) -> list:
    """The calls in ``mod``'s main function of the operators ``names`` (every call when none)."""
    from tvm import relax

    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and (not names or getattr(expr.op, "name", "") in names):
            found.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def run_kernel(kernel, inputs: list, shape: tuple, dtype: str = "float32",
               target: dict | None = None) -> np.ndarray:
    """Compile ``kernel`` (a PrimFunc, or an IRModule of one "main") for ``target`` (default:
    AVX2, on every x86 CI machine) and run it on the numpy ``inputs``; its output of ``shape``
    and ``dtype``."""
    import tvm

    mod = kernel if isinstance(kernel, tvm.IRModule) else tvm.IRModule({"main": kernel})
    lib = tvm.compile(mod, target=tvm.target.Target(target or AVX2_TARGET))
    out = tvm.runtime.tensor(np.zeros(shape, dtype))
    lib["main"](*(tvm.runtime.tensor(v) for v in inputs), out)
    return out.numpy()


def compile_unread_model(tmp_path: Path, *options: str):
    """``deploytool compile`` of an empty model file with ``options``: for the refusals that
    come before the model is read."""
    from click.testing import CliRunner

    from deploytool.cli import main

    model = tmp_path / "m.pt"
    model.write_bytes(b"")
    return CliRunner().invoke(main, ["compile", str(model), *options])


def compile_traced(tmp_path: Path, module, shape, *options: str) -> tuple[dict, Path]:
    """``deploytool compile`` of ``module`` traced at input ``shape`` (input ``x``) with
    ``options``, into ``tmp_path/pkg`` with its IR dumped in ``tmp_path/dump``; asserts that it
    succeeds and returns the manifest and the dump folder."""
    import json

    import torch
    from click.testing import CliRunner

    from deploytool.cli import main

    model = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(module, torch.zeros(shape)), str(model))
    out, dump = tmp_path / "pkg", tmp_path / "dump"
    spec = f"x:{'x'.join(map(str, shape))}:float32"
    outcome = CliRunner().invoke(main, ["compile", str(model), "-i", spec, *options, "-o",
                                        str(out), "--no-java", "--dump-ir", str(dump)])
    assert outcome.exit_code == 0, outcome.output
    return json.loads((out / "manifest.json").read_text()), dump
