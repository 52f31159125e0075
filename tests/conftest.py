"""Shared fixtures: example models saved as TorchScript and packages compiled from them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deploytool.compiler import CompileOptions, compile_model
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import write_example


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_pt(models_dir) -> Path:
    return write_example("mlp", models_dir / "mlp.pt")


@pytest.fixture(scope="session")
def cnn_pt(models_dir) -> Path:
    return write_example("cnn", models_dir / "cnn.pt")


@pytest.fixture(scope="session")
def mlp_package(mlp_pt, tmp_path_factory):
    out = tmp_path_factory.mktemp("packages") / "mlp"
    return compile_model(CompileOptions(model=mlp_pt, output=out))


@pytest.fixture(scope="session")
def cnn_package(cnn_pt, tmp_path_factory):
    out = tmp_path_factory.mktemp("packages") / "cnn"
    return compile_model(CompileOptions(model=cnn_pt, output=out))


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
