"""The CLI: commands, and one clear line for every kind of bad input."""

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner

from deploytool.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def assert_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert lines, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.mark.slow
def test_compile_prints_each_stage_and_writes_the_package(mlp_pt, tmp_path):
    out = tmp_path / "pkg"
    result = invoke("compile", mlp_pt, "--target", "cpu", "-o", out)
    assert result.exit_code == 0, result.output
    for stage in ("load", "export", "import", "build", "package"):
        assert f"  {stage} " in result.output
    assert (out / "model.so").is_file()


def test_targets_lists_one_line_per_file():
    result = invoke("targets")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert {"cpu", "x86_64-avx2", "x86_64-avx512"} <= set(names)


@pytest.mark.slow
def test_inspect_model_and_package(mlp_pt, mlp_package):
    result = invoke("inspect", mlp_pt)
    assert result.exit_code == 0
    assert "x:1x512:float32" in result.output and "output:1x2:float32" in result.output
    assert "Gemm" in result.output  # three Linear layers -> three Gemm nodes
    assert "Gemm                     3" in result.output
    result = invoke("inspect", mlp_package.path)
    assert result.exit_code == 0 and '"format_version": 1' in result.output


@pytest.mark.slow
def test_inspect_onnx(mlp_package):
    result = invoke("inspect", mlp_package.path / "model.onnx")
    assert result.exit_code == 0 and "Relu" in result.output


def test_example_writes_loadable_torchscript(tmp_path):
    result = invoke("example", "cnn", "-o", tmp_path / "cnn.pt")
    assert result.exit_code == 0
    module = torch.jit.load(str(tmp_path / "cnn.pt"))
    assert module(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_missing_file(tmp_path):
    assert_error(invoke("compile", tmp_path / "nope.pt", "-o", tmp_path / "o"), 1, "not found")


def test_state_dict_is_not_torchscript(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    assert_error(invoke("compile", path, "-i", "x:1x2", "-o", tmp_path / "o"), 1,
                 "saved with torch.save", "torch.jit.save")


def test_eager_pickle_is_not_torchscript(tmp_path):
    path = tmp_path / "eager.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    assert_error(invoke("compile", path, "-i", "x:1x2", "-o", tmp_path / "o"), 1,
                 "saved with torch.save", "torch.jit.save")


def test_plain_text_is_not_torchscript(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    assert_error(invoke("compile", path, "-o", tmp_path / "o"), 1, "not a TorchScript file")


def test_malformed_input_is_a_usage_error(mlp_pt, tmp_path):
    assert_error(invoke("compile", mlp_pt, "-i", "x:1xq", "-o", tmp_path / "o"), 2,
                 "malformed shape")


def test_shape_the_model_rejects(mlp_pt, tmp_path):
    result = invoke("compile", mlp_pt, "-i", "x:1x100:float32", "-o", tmp_path / "o")
    assert_error(result, 1, "the model rejected inputs x:1x100:float32", "--input")
    assert not (tmp_path / "o").exists()


def test_wrong_number_of_inputs(mlp_pt, tmp_path):
    assert_error(invoke("compile", mlp_pt, "-i", "x:1x512", "-i", "y:1x512", "-o", tmp_path / "o"),
                 1, "takes 1 input(s) but 2 were given")


def test_model_without_stored_shapes_asks_for_input(tmp_path):
    path = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    assert_error(invoke("compile", path, "-o", tmp_path / "o"), 1, "carries no input shapes",
                 "--input")


def test_unknown_target(mlp_pt, tmp_path):
    assert_error(invoke("compile", mlp_pt, "--target", "z80", "-o", tmp_path / "o"), 1,
                 "unknown target 'z80'", "x86_64-avx2")


@pytest.mark.slow
def test_existing_output_is_refused_without_force(mlp_pt, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_error(invoke("compile", mlp_pt, "-o", out), 1, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "manifest.json").write_text("{}")  # --force replaces only what looks like a package
    result = invoke("compile", mlp_pt, "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "model.so").is_file()


UNSUPPORTED = textwrap.dedent("""
    import torch

    class Det(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.det(x) * 2.0
""")


def test_unsupported_operator_is_named_and_nothing_is_left(tmp_path, monkeypatch):
    (tmp_path / "detmodel.py").write_text(UNSUPPORTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    import detmodel

    path = tmp_path / "det.pt"
    torch.jit.save(torch.jit.script(detmodel.Det()), str(path))
    out = tmp_path / "o"
    assert_error(invoke("compile", path, "-i", "x:2x3x3", "-o", out), 1,
                 "Relax ONNX frontend cannot import operator(s) Det")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o")] == []


@pytest.mark.slow
def test_inline_target_json(mlp_pt, tmp_path):
    target = json.dumps({"target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                    "mcpu": "haswell"}})
    result = invoke("compile", mlp_pt, "--target", target, "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["target"]["resolved_cpu"] == "haswell"
    assert "avx512f" not in manifest["runtime"]["cpu_features"]
