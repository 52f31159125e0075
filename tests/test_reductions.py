"""The hand-written reduction schedules: means over pixels, and row-wise kernels (softmax, layer
norm), vectorized and shared by the threads; the numbers stay right."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_kernel, squeeze_excite

from deploytool.build.cpu_pipeline import prim_funcs
from deploytool.compiler import CompileOptions, compile_model
from deploytool.schedules.reductions import schedule_reduction
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import save_torchscript
from deploytool.tuning.settings import TuneSettings


def attention_scores(tokens: int = 197, width: int = 64):
    """Layer norm, then softmax over a ViT's 197 tokens: (model, inputs)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(width)

        def forward(self, x):
            y = self.norm(x)
            return torch.softmax(torch.matmul(y, y.transpose(1, 2)) * 0.05, dim=-1)

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, tokens, width))]


def _kernels(path, prefix: str):
    from deploytool.build.cpu_pipeline import fuse
    from deploytool.frontends.load import load_model, to_onnx
    from deploytool.importer.relax import import_relax
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.targets import load_target

    mod = fuse(import_relax(to_onnx(load_model(path))), tuning_target(load_target("cpu")))
    return [f for gv, f in prim_funcs(mod) if gv.name_hint.startswith(prefix)]


def _validates(path, folder) -> dict:
    package = compile_model(CompileOptions(model=path, output=folder / "pkg", java=False,
                                           tuning=TuneSettings(db=folder / "no-db")))
    manifest = json.loads((package.path / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed", manifest["validation"]
    return manifest["tuning"]


def test_a_mean_over_pixels_adds_vectors_of_channels(tmp_path):
    path = save_torchscript(*squeeze_excite(), tmp_path / "se.pt")
    (mean,) = _kernels(path, "mean")
    scheduled = schedule_reduction(mean, 256).script()
    # 40 channels: five tiles of one 8-float vector, shared by the threads; the pixels outside
    assert "T.parallel(T.int64(5))" in scheduled, scheduled
    assert "T.vectorized(T.int64(8))" in scheduled, scheduled
    assert re.search(r"for k1, k2 in T\.grid\(.*\):\s*for \w+ in T\.vectorized\(T\.int64\(8\)\)",
                     scheduled), scheduled
    assert 'T.sblock("lv' in scheduled and "_red_init" in scheduled  # zeroed before the pixels


def test_rows_of_softmax_and_layer_norm_run_one_after_another(tmp_path):
    path = save_torchscript(*attention_scores(), tmp_path / "rows.pt")
    (softmax,) = _kernels(path, "softmax")
    scheduled = schedule_reduction(softmax, 256).script()
    # a row loop for each row's 16 partial maxima, one for the rest of the blocks
    assert scheduled.count("T.parallel(") == 2, scheduled
    assert "T.vectorized(T.int64(16))" in scheduled  # 12 vectors of a 197-long row, then 5
    assert "in range(T.int64(12), T.int64(13))" in scheduled, scheduled
    assert "T_softmax_maxelem_init" in scheduled  # no branch inside the reduction loop
    # the maximum in vectors of partial maxima (LLVM leaves a max reduction scalar)
    assert re.search(r'for \w+ in T\.vectorized\(T\.int64\(16\)\):\s*with T\.sblock\('
                     r'"T_softmax_maxelem_rf_update', scheduled), scheduled
    (norm,) = _kernels(path, "layer_norm")
    assert schedule_reduction(norm, 256) is not None


def test_convolutions_are_not_reductions_it_schedules(tmp_path):
    path = save_torchscript(*squeeze_excite(), tmp_path / "se.pt")
    for kernel in _kernels(path, "fused_conv2d"):
        assert schedule_reduction(kernel, 256) is None


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 4, 197, 197), (1, 2, 128, 128), (3, 40)])
def test_a_softmax_with_maxima_in_vectors_matches_numpy(shape):
    import numpy as np
    from tvm import te, topi

    x = te.placeholder(shape, name="x")
    scheduled = schedule_reduction(te.create_prim_func([x, topi.nn.softmax(x, -1)]), 256)
    assert "_rf_update" in scheduled.script()
    values = np.random.default_rng(0).standard_normal(shape).astype("float32") * 8
    values[0, ..., -1] = 100.0  # the largest in the last, partial vector
    exp = np.exp(values - values.max(-1, keepdims=True))
    np.testing.assert_allclose(run_kernel(scheduled, [values], shape),
                               exp / exp.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_llvm_may_reassociate_additions():
    """So that it vectorizes the reductions left to it (a softmax's sums)."""
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.targets import load_target

    target = tuning_target(load_target("cpu")).export()
    assert target["fast-math-reassoc"] and "fast-math-nnan" not in target


@pytest.mark.slow
@pytest.mark.parametrize("model", [squeeze_excite, attention_scores])
def test_packages_with_reduction_schedules_validate(tmp_path, model):
    path = save_torchscript(*model(), tmp_path / "model.pt")
    plan = _validates(path, tmp_path)
    assert plan["reductions"] >= 1, plan
