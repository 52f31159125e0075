"""The model zoo, compiled for cpu and run by the package's native runner.

Each package's outputs are compared with torch eager, TorchScript and ONNX Runtime (on the ONNX
the package was compiled from); models expected to fail are checked for a message that names the
operator, the stage and a workaround. A few public architectures (torchvision, Hugging Face) stand
for the whole public zoo, which ``make zoo`` compiles (docs/models-coverage.md).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deploytool.cli import main
from deploytool.compiler import CompileOptions, compile_model
from deploytool.errors import DeploytoolError
from deploytool.frontends import exported
from deploytool.frontends.torchscript import run_torchscript
from deploytool.package.manifest import load_package
from deploytool.tensors import sample_inputs
from deploytool.testing.zoo import build_zoo_model, save_exported, save_zoo_torchscript
from deploytool.verify.references import flat_outputs

pytestmark = pytest.mark.slow

ONNX = "torchscript -> onnx -> relax"
RETRACED = "torchscript -> torch.export -> relax"
EXPORTED = "torch.export -> relax"

# name, file format, zoo arguments (small sizes keep CI fast; coverage is the point), the route
# the compile takes and the package's output names
CASES = [
    ("mlp", "pt", {}, ONNX, ["output"]),
    ("cnn", "pt", {}, ONNX, ["output"]),
    ("resnet18", "pt", {"num_classes": 10, "size": 64}, ONNX, ["output"]),
    ("mobilenet_v2", "pt", {"num_classes": 10, "size": 64}, ONNX, ["output"]),
    ("gru", "pt", {}, ONNX, ["output"]),
    ("lstm", "pt", {}, ONNX, ["output"]),
    ("control_flow", "pt", {}, ONNX, ["output"]),
    ("two_io", "pt", {}, ONNX, ["output0", "output1"]),
    ("transformer", "pt", {}, RETRACED, ["output"]),  # no ONNX form of the encoder's fast path
    ("transformer", "pt2", {}, EXPORTED, ["output"]),
    ("lstm", "pt2", {}, EXPORTED, ["output"]),
    # public architectures: a dict output on both routes, a traced Hugging Face model on each
    ("tv_lraspp", "pt", {}, ONNX, ["out"]),  # its forward() takes `input`, not `x`
    ("tv_lraspp", "pt2", {}, EXPORTED, ["out"]),
    ("hf_bert", "pt", {}, ONNX, ["output0", "output1"]),
    ("hf_gpt2", "pt", {}, RETRACED, ["output"]),  # traced GPT-2 holds aten::diff: no ONNX form
]


def build(name: str, fmt: str, kwargs: dict, folder: Path):
    """The zoo model (seeded weights), its input specs and its saved file."""
    model, inputs = build_zoo_model(name, **kwargs)
    path = folder / f"{name}.{fmt}"
    if fmt == "pt2":
        save_exported(model, inputs, path)
    else:
        save_zoo_torchscript(name, model, inputs, path)
    return model, inputs, path


def run_package(package_dir: Path, arrays: list[np.ndarray], scratch: Path) -> list[np.ndarray]:
    """Run bin/deploytool-run on .npy inputs in a clean environment; returns its outputs."""
    package = load_package(package_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    command = [str(package.runner), str(package_dir)]
    for spec, array in zip(package.inputs, arrays, strict=True):
        np.save(scratch / f"{spec.name}.npy", array)
        command += ["--input", f"{spec.name}={scratch / f'{spec.name}.npy'}"]
    out = scratch / "out"
    out.mkdir()
    subprocess.run([*command, "--output-dir", str(out)], check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin"})
    return [np.load(out / f"{spec.name}.npy") for spec in package.outputs]


def eager(model, arrays: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        result = model(*[torch.from_numpy(a) for a in arrays])
    return [t.numpy() for t in flat_outputs(result)]


def onnx_runtime(onnx_path: Path, names: list[str], arrays: list[np.ndarray]) -> list:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, arrays, strict=True)))


def assert_close(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, what
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


@pytest.mark.parametrize(("name", "fmt", "kwargs", "route", "outputs"), CASES,
                         ids=[f"{c[0]}.{c[1]}" for c in CASES])
def test_zoo_model_compiles_and_matches(compile_package, name, fmt, kwargs, route, outputs,
                                        tmp_path):
    model, inputs, path = build(name, fmt, kwargs, tmp_path)
    package = compile_package(path, java=False)
    assert package.manifest["validation"]["status"] == "passed"  # deploytool's own check
    assert package.manifest["model"]["route"] == route
    assert [d["name"] for d in package.manifest["outputs"]] == outputs
    assert [d["name"] for d in package.manifest["inputs"]] == [s.name for s in inputs]
    if fmt == "pt" and name in ("gru", "lstm"):  # converted by deploytool, and noted
        assert any(name.upper() in note and "converter" in note
                   for note in package.manifest["model"]["notes"])
    if route != ONNX:
        assert not (package.path / "model.onnx").exists()  # torch.export routes: no ONNX
    assert [d["dtype"] for d in package.manifest["inputs"]] == [s.dtype for s in inputs]
    batches = [sample_inputs(inputs, seed=1)]
    if name == "control_flow":  # both branches of the data-dependent `if`
        batches.append([-a for a in batches[0]])
        assert (batches[0][0].sum() > 0) != (batches[1][0].sum() > 0)
    for i, arrays in enumerate(batches):
        got = run_package(package.path, arrays, tmp_path / f"run{i}")
        assert_close(got, eager(model, arrays), f"{name}.{fmt} vs torch eager")
        if fmt == "pt":
            scripted = torch.jit.load(str(path))
            assert_close(got, run_torchscript(scripted, arrays), f"{name} vs TorchScript")
            if route == ONNX:
                assert_close(got, onnx_runtime(package.path / "model.onnx",
                                               [s.name for s in inputs], arrays),
                             f"{name} vs ONNX Runtime")


def failed_compile_message(name: str, tmp_path) -> str:
    """Compile a zoo model expected to fail; check it failed cleanly and return its error line."""
    _, _, path = build(name, "pt", {}, tmp_path)
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(out), "--no-java"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert not out.exists()
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ")
    return message


def test_data_dependent_loop_fails_at_import_with_a_workaround(tmp_path):
    message = failed_compile_message("dynamic_loop", tmp_path)
    assert "operator(s) Loop" in message and "stage import" in message
    assert "re-tracing with torch.export failed too" in message  # the second route was tried
    assert "constant trip count" in message


@pytest.mark.slow
def test_wrong_numbers_from_torch_export_lstm_are_detected(tmp_path, monkeypatch):
    """Without deploytool's fix, TVM compiles the .pt2 LSTM model to wrong numbers (the
    ``y[:, -1]`` select reads out of bounds); validation against torch.export catches it."""
    model, inputs, path = build("lstm", "pt2", {}, tmp_path)
    monkeypatch.setattr(exported, "PROGRAM_FIXES", {})
    with pytest.raises(DeploytoolError, match="validation FAILED: output 'output' differs from "
                                              "torch.export"):
        compile_model(CompileOptions(model=path, output=tmp_path / "refused", java=False))
    assert not (tmp_path / "refused").exists()
    broken = compile_model(CompileOptions(model=path, output=tmp_path / "broken", java=False,
                                          allow_mismatch=True))
    assert broken.manifest["validation"]["status"] == "failed"
    arrays = sample_inputs(inputs, seed=1)
    want = eager(model, arrays)
    got = run_package(broken.path, arrays, tmp_path / "run-broken")
    assert not np.allclose(got[0], want[0], rtol=1e-4, atol=1e-4), "discrepancy not detected"
    monkeypatch.undo()
    fixed = compile_model(CompileOptions(model=path, output=tmp_path / "fixed", java=False))
    assert fixed.manifest["validation"]["status"] == "passed"
    assert fixed.manifest["validation"]["references"][0] == "torch.export"
    assert fixed.manifest["model"]["notes"] == [
        "applied torch.export fix 'negative select index' to 1 node(s)"]
    assert_close(run_package(fixed.path, arrays, tmp_path / "run-fixed"), want, "fixed lstm")
