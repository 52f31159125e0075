"""make demo: write the example MLP, compile it for this CPU, build the C++ example and run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from ..compiler import CompileOptions, compile_model
from ..frontends.load import load_model
from ..frontends.torchscript import run_torchscript
from ..tensors import sample_inputs
from .examples import write_example

ARTIFACTS = Path("artifacts")


def build_cpp_example(package_dir: Path) -> Path:
    """Build examples/cpp/main.cc against the package alone, with the README's g++ line."""
    exe = package_dir / "example"
    subprocess.run(["g++", "-std=c++17", "examples/cpp/main.cc", "-Iinclude", "-Llib",
                    "-ldeploytool", "-Wl,-rpath,$ORIGIN/lib", "-o", exe.name],
                   cwd=package_dir, check=True)
    return exe


def main() -> int:
    model_path = write_example("mlp", ARTIFACTS / "mlp.pt")
    print(f"wrote {model_path}")
    package = compile_model(CompileOptions(model=model_path, output=ARTIFACTS / "mlp", force=True),
                            log=print)
    exe = build_cpp_example(package.path)
    source = load_model(model_path)
    inputs = sample_inputs(source.inputs, seed=1)
    np.save(package.path / "demo_input.npy", inputs[0])
    run = subprocess.run(["env", "-i", str(exe.resolve()), ".", "demo_input.npy"],
                         cwd=package.path, capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return 1
    name, values = run.stdout.split(":", 1)
    native = np.array(values.split(), dtype=np.float32)
    reference = run_torchscript(source.module, inputs)[0].ravel()
    print(f"\nC++ example (no Python), output '{name}': {native}")
    print(f"TorchScript,               output '{name}': {reference}")
    print(f"max abs difference: {np.abs(native - reference).max():.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
