"""Software prefetch of the next channel tile's weights: which kernels get it, and the numbers
stay right."""

from __future__ import annotations

import json

import pytest
from conftest import relax_module

from deploytool.tensors import TensorSpec
from deploytool.testing.examples import save_torchscript
from deploytool.tuning.settings import TuneSettings


def late_and_early_layers():
    """A wide 3x3 convolution on an 8x8 map, whose weights outweigh its output: its threads split
    the channel tiles, each 147 KB slice swept by 8 rows, worth prefetching. Before it, two whose
    outputs outweigh their weights: their threads split the rows, and nothing is prefetched."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.early = nn.Conv2d(16, 32, 3, 1, 1)
            self.pool = nn.AvgPool2d(8)
            self.widen = nn.Conv2d(32, 128, 1)
            self.late = nn.Conv2d(128, 128, 3, 1, 1)

        def forward(self, x):
            y = self.widen(self.pool(torch.relu(self.early(x))))
            return torch.relu(self.late(y)) + y

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, 16, 64, 64))]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model, inputs = late_and_early_layers()
    return save_torchscript(model, inputs, tmp_path_factory.mktemp("prefetch") / "layers.pt")


def _kernels_with_prefetches(path) -> dict[str, int]:
    from deploytool.build.cpu_pipeline import fuse, pack_weights, prim_funcs
    from deploytool.schedules.cpu import schedule_kernel
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.schedules.prefetch import insert_prefetches
    from deploytool.targets import load_target

    mod = fuse(relax_module(path), tuning_target(load_target("cpu")))
    for gv, func in prim_funcs(mod):
        scheduled = schedule_kernel(func)
        if scheduled is not None:
            mod[gv] = scheduled
    mod = insert_prefetches(pack_weights(mod))
    return {gv.name_hint: func.script().count("llvm.prefetch") for gv, func in prim_funcs(mod)}


def test_only_slices_swept_by_few_rows_are_prefetched(model_path):
    counts = _kernels_with_prefetches(model_path)
    by_layer = {"early": "fused_conv2d_add_relu", "widen": "fused_conv2d1_add1",
                "late": "fused_conv2d2_add1_relu1_add2"}
    found = {layer: [c for n, c in counts.items() if n.startswith(prefix) and "prepacked" in n]
             for layer, prefix in by_layer.items()}
    assert all(len(c) == 1 for c in found.values()), counts
    assert found["early"] == [0] and found["widen"] == [0], counts
    # the late slice is 2,304 lines (147 KB) read over 8 sweeps of 288 iterations (3x3 taps x
    # 32 unrolled steps of 4 channels): one line per iteration
    assert found["late"] == [1], counts
    assert sum(counts.values()) == 1, counts


@pytest.mark.slow
def test_a_prefetching_package_matches_both_references(compile_package, model_path, tmp_path):
    package = compile_package(model_path, java=False, tuning=TuneSettings(db=tmp_path / "no-db"))
    validation = json.loads((package.path / "manifest.json").read_text())["validation"]
    assert validation["status"] == "passed", validation
    assert set(validation["references"]) >= {"onnxruntime", "torchscript"}
