"""Custom operators: --torch-library loads their definitions; a model that calls an operator no
loaded library defines, or one whose output size depends on the data (detection NMS), fails in
one line that names the operator and says what to do."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A custom operator with a decomposition: torch.export (and so the re-trace route) inlines it.
LIBRARY = """
import torch
lib = torch.library.Library("dtest", "DEF")
lib.define("twice(Tensor x) -> Tensor")
lib.impl("twice", lambda x: x * 2 + 1, "CompositeImplicitAutograd")
"""

SAVE = """
import json, runpy, sys, torch
runpy.run_path(sys.argv[1])
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
    def forward(self, x):
        return torch.ops.dtest.twice(self.linear(x))
torch.manual_seed(0)
model, args = Model().eval(), (torch.randn(1, 4),)
inputs = json.dumps([{"name": "x", "shape": [1, 4], "dtype": "float32"}])
torch.jit.save(torch.jit.script(model), sys.argv[2], _extra_files={"inputs.json": inputs})
torch.export.save(torch.export.export(model, args), sys.argv[3])
"""


def deploytool(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A deploytool command in its own process (where no test defined the operator)."""
    return subprocess.run([sys.executable, "-m", "deploytool", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("custom_ops")
    library = folder / "dtest_ops.py"
    library.write_text(LIBRARY)
    files = {"library": library, "pt": folder / "m.pt", "pt2": folder / "m.pt2"}
    script = folder / "save.py"  # a file: torch.jit.script reads the model's source
    script.write_text(SAVE)
    subprocess.run([sys.executable, script, library, files["pt"], files["pt2"]], check=True,
                   capture_output=True)
    return files


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("fmt", ["pt", "pt2"])
def test_unknown_custom_operator_is_named_with_the_option(custom_model, tmp_path, fmt):
    proc = deploytool("compile", custom_model[fmt], "-o", tmp_path / "pkg", "--no-java")
    assert_one_line_error(proc, "dtest::twice", "--torch-library")
    assert not (tmp_path / "pkg").exists()


def test_missing_torch_library_is_one_line(custom_model, tmp_path):
    proc = deploytool("compile", custom_model["pt"], "--torch-library", tmp_path / "nope.so",
                      "-o", tmp_path / "pkg")
    assert_one_line_error(proc, "nope.so", "not found")


def test_broken_torch_library_is_one_line(custom_model, tmp_path):
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared library")
    proc = deploytool("compile", custom_model["pt"], "--torch-library", broken,
                      "-o", tmp_path / "pkg")
    assert_one_line_error(proc, "broken.so", "could not be loaded")


@pytest.mark.slow
def test_torch_library_lets_the_model_compile_and_validate(custom_model, tmp_path):
    package = tmp_path / "pkg"
    proc = deploytool("compile", custom_model["pt"], "--torch-library", custom_model["library"],
                      "-o", package, "--no-java")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed"
    assert manifest["model"]["torch_libraries"] == [str(custom_model["library"].resolve())]
    # validate runs the TorchScript reference in a new process: the recorded library is loaded
    proc = deploytool("validate", package)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torchscript" in proc.stdout


DETECTION = """
import json, sys, torch
from deploytool.testing.torchvision_compat import import_torchvision
tv = import_torchvision()
torch.manual_seed(0)
detector = tv.models.detection.ssdlite320_mobilenet_v3_large(
    weights=None, weights_backbone=None, num_classes=3).eval()
class Boxes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.detector = detector
    def forward(self, image):
        found = self.detector([image[0]])[0]
        return found["boxes"], found["scores"]
inputs = json.dumps([{"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32"}])
traced = torch.jit.trace(Boxes().eval(), (torch.rand(1, 3, 64, 64),), check_trace=False)
torch.jit.save(traced, sys.argv[1], _extra_files={"inputs.json": inputs})
"""


@pytest.mark.slow
def test_detection_model_fails_in_one_line_naming_nms(tmp_path):
    model = tmp_path / "detector.pt"
    subprocess.run([sys.executable, "-c", DETECTION, model], check=True, capture_output=True)
    proc = deploytool("compile", model, "-o", tmp_path / "pkg", "--no-java")
    assert_one_line_error(proc, "torchvision::nms", "--torch-library")  # not defined here
    nms = tmp_path / "nms.py"
    nms.write_text(textwrap.dedent("""
        from deploytool.testing.torchvision_compat import import_torchvision
        import_torchvision()
    """))
    proc = deploytool("compile", model, "--torch-library", nms, "-o", tmp_path / "pkg",
                      "--no-java")
    assert_one_line_error(proc, "torchvision::nms", "depends on the input's values",
                          "raw boxes and scores")
    assert not (tmp_path / "pkg").exists()
