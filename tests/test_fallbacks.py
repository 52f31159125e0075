"""Export fallbacks: freezing and folding inference constants when ONNX export fails."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from deploytool.cli import main
from deploytool.frontends.fallbacks import specialise_for_inference, unsupported_aten_operator
from deploytool.frontends.load import load_model, to_onnx
from deploytool.tensors import TensorSpec, sample_inputs
from deploytool.testing.examples import save_torchscript
from deploytool.testing.zoo import transformer


class AutocastAware(nn.Module):
    """Branches on autocast and autograd, which the ONNX exporter cannot express."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        if torch.is_autocast_enabled() or torch.is_grad_enabled():
            y = y.half().float()
        return torch.relu(y)


def saved(tmp_path):
    torch.manual_seed(0)
    model = AutocastAware().eval()
    return model, save_torchscript(model, [TensorSpec("x", (1, 8))], tmp_path / "aa.pt")


def test_export_retries_after_freezing_and_says_so(tmp_path):
    model, path = saved(tmp_path)
    onnx_model = to_onnx(load_model(path))
    assert len(onnx_model.notes) == 1
    note = onnx_model.notes[0]
    assert "aten::is_autocast_enabled" in note and "torch.jit.freeze" in note
    assert "aten::is_grad_enabled x1" in note
    x = sample_inputs(onnx_model.inputs)[0]
    session = onnxruntime.InferenceSession(onnx_model.proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_compile_logs_the_fallback(tmp_path):
    _, path = saved(tmp_path)
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "pkg"),
                                       "--no-java"])
    assert result.exit_code == 0, result.output
    assert "note: plain ONNX export failed" in result.output


def test_specialising_keeps_the_transformer_outputs():
    torch.manual_seed(0)
    model, inputs = transformer()
    scripted = torch.jit.script(model.eval())
    frozen, folded = specialise_for_inference(scripted)
    assert folded["aten::is_autocast_enabled"] > 0 and folded["aten::is_grad_enabled"] > 0
    tokens = torch.from_numpy(sample_inputs(inputs)[0])
    with torch.no_grad():
        torch.testing.assert_close(frozen(tokens), model(tokens))


def test_operator_is_read_from_the_exporter_message():
    err = RuntimeError("Exporting the operator 'aten::is_autocast_enabled' to ONNX opset "
                       "version 17 is not supported")
    assert unsupported_aten_operator(err) == "aten::is_autocast_enabled"
    assert unsupported_aten_operator(RuntimeError("something else")) is None
