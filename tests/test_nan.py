"""NaN in, NaN out where PyTorch gives NaN: relu, relu6, clamp and hardtanh (max/min against a
constant) keep a NaN input instead of turning it into the constant."""

import numpy as np
import pytest
import torch
from conftest import run_clean
from torch import nn

from deploytool.tensors import TensorSpec
from deploytool.testing.examples import save_torchscript

pytestmark = pytest.mark.slow


class Activations(nn.Module):
    def forward(self, x):
        return torch.cat([torch.relu(x), nn.functional.relu6(x), torch.clamp(x, -0.5, 0.5),
                          nn.functional.hardtanh(x), torch.clamp(x, min=0.25)], dim=1)


def test_nan_inputs_give_nan_where_torch_does(compile_package, tmp_path):
    spec = TensorSpec("x", (2, 64), "float32")
    path = save_torchscript(Activations(), [spec], tmp_path / "activations.pt")
    package = compile_package(path)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 64)).astype(np.float32)
    x[0, ::3] = np.nan
    x[1, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    proc = run_clean([package.runner, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", out])
    assert proc.returncode == 0, proc.stderr
    got = np.load(next(out.glob("*.npy")))
    want = Activations()(torch.from_numpy(x)).numpy()
    assert np.isnan(want).sum() == 5 * 23
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
