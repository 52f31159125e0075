"""The hand-written schedules: which kernels get them, packed weights, and correct numbers."""

from __future__ import annotations

import json
import re

import pytest
from conftest import depthwise, grouped, relax_module, residual_conv

from deploytool.build.cpu_pipeline import prim_funcs
from deploytool.schedules.cpu import _tile_sizes, schedule_kernel, schedule_pool
from deploytool.tensors import TensorSpec
from deploytool.testing.examples import save_torchscript
from deploytool.tuning.settings import TuneSettings


def every_kernel_kind():
    """Convolutions of each form the schedules know, ReLU6, a residual add, and two Linear
    layers, one of whose 10 outputs do not split into vectors (padded to 16)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, 2, 1)  # strided, 3 input channels
            self.depthwise = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
            self.grouped = nn.Conv2d(32, 32, 3, 1, 1, groups=4)
            self.pointwise = nn.Conv2d(32, 16, 1)
            self.wide = nn.Linear(16, 24)
            self.narrow = nn.Linear(24, 10)

        def forward(self, x):
            y = torch.clamp(self.stem(x), 0, 6)
            y = torch.clamp(self.depthwise(y), 0, 6) + y
            y = self.pointwise(torch.relu(self.grouped(y)))
            return self.narrow(torch.relu(self.wide(y.mean(dim=(2, 3)))))

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, 3, 20, 20))]


@pytest.fixture(scope="module")
def kinds_path(tmp_path_factory):
    return save_torchscript(*every_kernel_kind(), tmp_path_factory.mktemp("kinds") / "kinds.pt")


@pytest.fixture(scope="module")
def kinds_package(compile_package, kinds_path):
    return compile_package(kinds_path, java=False,
                           tuning=TuneSettings(db=kinds_path.parent / "no-db"))


def _fused(path, target_name: str = "cpu"):
    from deploytool.build.cpu_pipeline import fuse
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.targets import load_target

    target = tuning_target(load_target(target_name))
    return fuse(relax_module(path), target)


def _first_convolution(path):
    """The model's first fused convolution kernel, fused for AVX2 (narrow registers)."""
    return next(f for gv, f in prim_funcs(_fused(path, "x86_64-avx2"))
                if gv.name_hint.startswith("fused_conv2d"))


def _assert_validates(compile_package, path, target: str = "cpu") -> None:
    """Compile ``path`` untuned for ``target``; its validation against ONNX Runtime and
    TorchScript must pass."""
    package = compile_package(path, target, java=False,
                              tuning=TuneSettings(db=path.parent / "no-db"))
    validation = json.loads((package.path / "manifest.json").read_text())["validation"]
    assert validation["status"] == "passed", validation


@pytest.mark.slow
def test_every_convolution_and_matrix_product_gets_the_register_tiled_schedule(kinds_package):
    manifest = json.loads((kinds_package.path / "manifest.json").read_text())
    plan = manifest["tuning"]
    # 4 convolutions and both Linear layers (the 10-wide one padded to a vector of 16)
    assert plan["hand_written"] == 6, plan
    assert plan["default"] == plan["tasks"] and plan["unscheduled"] == 0
    assert "register-tiled" in plan["default_schedule"]


@pytest.mark.slow
def test_the_package_matches_both_references(kinds_package):
    validation = json.loads((kinds_package.path / "manifest.json").read_text())["validation"]
    assert validation["status"] == "passed", validation
    assert set(validation["references"]) >= {"onnxruntime", "torchscript"}
    assert validation["comparisons"] and all(c["passed"] for c in validation["comparisons"])


def test_weights_are_packed_at_compile_time(kinds_path):
    """The packing runs once, on the constants, not in the compiled model at every run."""
    import tvm
    from tvm import relax

    from deploytool.build.cpu_pipeline import pack_weights

    mod = _fused(kinds_path)
    for gv, func in prim_funcs(mod):
        scheduled = schedule_kernel(func)
        if scheduled is not None:
            mod[gv] = scheduled
    mod = pack_weights(mod)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    packed = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            callee = mod[expr.args[0]]
            assert "layout_rewrite_preproc" not in callee.script(), expr.args[0].name_hint
            for arg in expr.args[1].fields:
                if isinstance(arg, tvm.ir.expr.Constant) and arg.ty.ndim == 5:
                    packed.append(tuple(int(d) for d in arg.ty.shape))

    relax.analysis.post_order_visit(mod["main"], visit)
    # the stem's HWIO weight 3x3x3x32 packed as (32/32)x3x3x3x32 , the depthwise one likewise
    assert (1, 3, 3, 3, 32) in packed and (1, 3, 3, 1, 32) in packed, packed


def test_relu6_keeps_convolutions_channels_last(kinds_path):
    """Clip is imported as Relax maximum/minimum, which the layout conversion follows: the only
    transposes left are the model's input (NCHW to NHWC) and the mean's output."""
    mod = _fused(kinds_path)
    transposes = [gv.name_hint for gv, _ in prim_funcs(mod) if "transpose" in gv.name_hint]
    assert len(transposes) <= 2, transposes


def test_threads_split_rows_where_activations_outweigh_weights(kinds_path):
    """Every convolution here has a larger output than weight: its parallel loop runs over rows
    first. The Linear layer's 24x16 weight outweighs its 24 outputs: channel tiles first."""
    import re

    order = {}
    for gv, func in prim_funcs(_fused(kinds_path)):
        scheduled = schedule_kernel(func)
        if scheduled is not None:
            loops = re.findall(r"for (\w+) in T.parallel", scheduled.script())
            order[gv.name_hint] = loops[-1]  # after a grouped convolution's padding, if any
    convolutions = [n for n in order if n.startswith("fused_conv2d")]
    assert len(convolutions) == 4 and len(order) == 6, order
    assert all(order[n].startswith("nn_yy_xx_0_ff_0") for n in convolutions), order
    matmuls = [n for n in order if n.startswith("fused_matmul")]
    assert all(order[n].startswith("i1_0_i0_0") for n in matmuls), order  # N tiles, then rows


@pytest.mark.parametrize("channels, width, expected", [
    (64, 56, (8, 32)),   # two AVX-512 vectors of channels by 8 pixels
    (512, 7, (7, 32)),
    (144, 56, (14, 16)),  # 144 is 9 vectors: one vector by 14 pixels
    (1000, 1, (1, 40)),   # a matrix-vector product: one row, five vectors of 8 channels
    (128, 2, (2, 128)),   # too few pixels for a tall tile: wider channels instead
])
def test_register_tiles(channels, width, expected):
    pixels, channel = _tile_sizes(channels, width)
    assert (pixels, channel) == expected
    assert channels % channel == 0 and width % pixels == 0 and pixels * channel <= 256


def test_channels_that_do_not_split_into_vectors_are_refused():
    with pytest.raises(ValueError, match="10 channels"):
        _tile_sizes(10, 4)


def test_a_kernel_it_does_not_know_is_left_alone():
    from tvm import te

    a = te.placeholder((4, 8), name="a")
    b = te.compute((4, 8), lambda i, j: a[i, j] * 2, name="b")
    assert schedule_kernel(te.create_prim_func([a, b])) is None


def test_a_symbolic_batch_is_left_to_the_other_schedules():
    from tvm import te, tirx, topi

    n = tirx.Var("n", "int64")
    x = te.placeholder((n, 8), name="x")
    w = te.placeholder((8, 32), name="w")
    y = topi.matmul(x, w)
    func = te.create_prim_func([x, w, y])
    assert schedule_kernel(func) is None


@pytest.mark.parametrize("target, lanes", [("x86_64-avx512", 256), ("x86_64-avx2", 96),
                                           ("arm64", 96)])
def test_tiles_fit_the_targets_registers(target, lanes):
    import tvm

    from deploytool.schedules.cpu import accumulator_lanes
    from deploytool.targets import load_target

    assert accumulator_lanes(tvm.target.Target(load_target(target).target)) == lanes
    pixels, channel = _tile_sizes(64, 56, lanes)
    assert pixels * channel <= lanes and pixels >= 4  # 16 AVX2 or 32 NEON registers, no spills
    # A matrix-vector product (one row) takes the widest channel tile that fits: 128 channels
    # do not fit 96 lanes (asking for them once left every Linear layer of AVX2 and ARM builds
    # to the slower sampled schedules).
    assert _tile_sizes(256, 1, lanes) == (1, 128 if lanes == 256 else 64)


def pooling_layers():
    """ResNet's max pooling (3x3, stride 2, padded) after a convolution (channels-last), and
    one over the NCHW input, whose last axis is the window's (left to the other schedules)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3, 1, 1)
            self.pool = nn.MaxPool2d(3, 2, 1)

        def forward(self, x):
            return self.pool(torch.relu(self.conv(x))).mean(dim=1) + self.pool(x).mean(dim=1)

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, 3, 16, 16))]


@pytest.mark.slow
def test_max_pooling_runs_a_vector_of_channels_at_a_time(compile_package, tmp_path):
    model, inputs = pooling_layers()
    path = save_torchscript(model, inputs, tmp_path / "pooling.pt")
    pools = {int(func.params[0].ty.shape[1]): func  # channels first: 3 (NCHW), 16 (NHWC)
             for gv, func in prim_funcs(_fused(path)) if gv.name_hint.startswith("max_pool")}
    assert sorted(pools) == [3, 16], pools
    assert schedule_pool(pools[3]) is None
    scheduled = schedule_pool(pools[16]).script()
    assert "T.vectorized(T.int64(16))" in scheduled, scheduled  # channels
    assert "T.parallel(T.int64(8))" in scheduled, scheduled  # output rows
    assert 'T.sblock("pad_temp")' not in scheduled  # padding read in place, no scratch rows
    _assert_validates(compile_package, path)


@pytest.mark.slow
def test_short_rows_lend_a_tile_pixels_of_the_next_row(compile_package, tmp_path):
    # A 1x1 convolution over 14x14 pixels, as in MobileNetV2 (its 64 input channels are too few
    # for _tile_remainder): for 96 accumulator lanes (AVX2), one row of 14 pixels fits no tile
    # bigger than 7x8; two rows' 196 pixels take 4x16 tiles.
    model, inputs = residual_conv(64, 14, kernel=1)
    path = save_torchscript(model, inputs, tmp_path / "short_rows.pt")
    kernel = _first_convolution(path)
    scheduled = schedule_kernel(kernel, 96).script()
    assert "yy_xx_fused" in scheduled  # one pixel loop over both rows and columns
    unrolled = [line for line in scheduled.splitlines() if "T.unroll(T.int64(4))" in line]
    assert any("yy_xx_fused" in line for line in unrolled), scheduled
    assert "T.vectorized(T.int64(16))" in scheduled
    # AVX-512's 32 registers take 7x32 from one row: nothing to gain from joining rows.
    assert "yy_xx_fused" not in schedule_kernel(kernel, 256).script()
    _assert_validates(compile_package, path, "x86_64-avx2")


@pytest.mark.slow
@pytest.mark.parametrize("kernel", [1, 3])
def test_24_channels_take_three_vectors_on_narrow_registers(compile_package, tmp_path, kernel):
    # MobileNetV2's 1x1 convolutions to 24 channels: on AVX2, 4x24 tiles (12 accumulators) of
    # three 8-float vectors, not one vector of 24 floats, nor 8x8 tiles. A 1x1 convolution pads
    # nothing, so it reads its input in place; a 3x3 one keeps its padding block.
    path = save_torchscript(*residual_conv(24, 28, kernel), tmp_path / "conv.pt")
    func = _first_convolution(path)
    scheduled = schedule_kernel(func, 96).script()
    assert "T.unroll(T.int64(3))" in scheduled and "T.vectorized(T.int64(8))" in scheduled
    assert "T.vectorized(T.int64(24))" not in scheduled
    assert ('T.sblock("pad_temp")' in scheduled) == (kernel == 3), scheduled
    assert _tile_sizes(24, 28, 96) == (4, 24)
    assert _tile_sizes(24, 28, 256)[1] == 8  # AVX-512: a vector is 16 floats
    _assert_validates(compile_package, path, "x86_64-avx2")


@pytest.mark.parametrize("group, lanes, tile", [
    (16, 256, (4, 32)), (16, 96, (4, 16)), (24, 256, (4, 24)), (24, 96, (4, 24)),
    (8, 256, (4, 16)), (64, 256, (4, 64))])
def test_grouped_tiles_hold_whole_groups_or_part_of_one(group, lanes, tile):
    assert _tile_sizes(group * 10, 4, lanes, remainder=True, group=group) == tile


@pytest.mark.slow
@pytest.mark.parametrize("group, size, stride", [(16, 4, 1), (24, 8, 1), (8, 16, 2)])
@pytest.mark.parametrize("lanes, target", [(256, "cpu"), (96, "x86_64-avx2")])
def test_grouped_convolutions_broadcast_one_input_per_group(compile_package, tmp_path, group,
                                                            size, stride, lanes, target):
    # RegNetX's 3x3 convolutions of 16 channels a group: a tile's vectors each stay inside one
    # group, so each multiplies a single broadcast input (a 32-float vector across two groups
    # gathered its inputs one by one and ran 15x slower). The numbers match on every target.
    path = save_torchscript(*grouped(group * 10, group, size, stride), tmp_path / "g.pt")
    func = next(f for gv, f in prim_funcs(_fused(path, target))
                if gv.name_hint.startswith("fused_conv2d"))
    scheduled = schedule_kernel(func, lanes).script()
    widths = [int(w) for w in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)\:\n\s+with "
                                          r"T\.sblock\(\"group_conv2d_nhwc_update", scheduled)]
    assert widths and all(group % w == 0 for w in widths), scheduled
    _assert_validates(compile_package, path, target)


@pytest.mark.slow
@pytest.mark.parametrize("size, stride", [(16, 1), (32, 2)])
def test_depthwise_convolutions_read_each_tap_in_place_on_narrow_registers(compile_package,
                                                                           tmp_path, size,
                                                                           stride):
    # 16 output pixels a row split into 4-pixel tiles of one 8-float vector, rows shared by
    # the threads, the padding inlined (no scratch copy of the tile's input rows); the numbers
    # along the borders, where taps fall outside the image, still match.
    path = save_torchscript(*depthwise(16, size, stride), tmp_path / "dw.pt")
    func = _first_convolution(path)
    scheduled = schedule_kernel(func, 96).script()
    assert 'T.sblock("pad_temp")' not in scheduled, scheduled
    assert "nn_yy_xx_0_fused in T.parallel(T.int64(64))" in scheduled, scheduled
    assert "T.unroll(T.int64(4))" in scheduled and "T.vectorized(T.int64(8))" in scheduled
    # AVX-512 (unmeasured) and rows of 14 pixels keep _tile's tiles and padding block
    assert 'T.sblock("pad_temp")' in schedule_kernel(func, 256).script()
    short = save_torchscript(*depthwise(16, 14), tmp_path / "short.pt")
    func = _first_convolution(short)
    assert 'T.sblock("pad_temp")' in schedule_kernel(func, 96).script()
    _assert_validates(compile_package, path, "x86_64-avx2")


@pytest.mark.slow
@pytest.mark.parametrize("channels, size, threads, tiles, leftover, leftover_tile", [
    # 147K weights for 6K outputs: threads share the 8 channel tiles; 49 pixels in one loop
    # take eight 6x16 tiles, then pixel 48 alone (its thread owns just 16 channels).
    (128, 7, "ff_0 in T.parallel(T.int64(8))",
     r"nn_yy_xx_fused_00, .* in T\.grid\(T\.int64\(8\),",
     "nn_yy_xx_fused_01 in range(T.int64(8), T.int64(9))", None),
    # More outputs than weights: threads share the 14 rows; each row's 14 pixels take two
    # tiles, then pixels 12 and 13, two channel tiles at once (2x32, 8 accumulators).
    (64, 14, "nn_yy_fused in T.parallel(T.int64(14))", r"xx_00, .* in T\.grid\(T\.int64\(2\),",
     "xx_01 in range(T.int64(2), T.int64(3))",
     r"ff_0_0, ry, rx, rc_0 in T\.grid\(T\.int64\(2\),(.|\n)*"
     r"xx_1 in T\.unroll\(T\.int64\(6\)\):\s*for ff_0_1 in T\.unroll\(T\.int64\(2\)\):\s*"
     r"for ff_1 in T\.vectorized\(T\.int64\(16\)\)"),
])
def test_pixels_left_over_from_the_tiles_get_a_tile_of_their_own(compile_package, tmp_path,
                                                                 channels, size, threads, tiles,
                                                                 leftover, leftover_tile):
    model, inputs = residual_conv(channels, size)
    path = save_torchscript(model, inputs, tmp_path / "conv.pt")
    kernel = _first_convolution(path)
    scheduled = schedule_kernel(kernel, 96).script()
    assert threads in scheduled, scheduled
    assert "T.unroll(T.int64(6))" in scheduled and "T.vectorized(T.int64(16))" in scheduled
    assert re.search(tiles, scheduled), scheduled
    assert leftover in scheduled, scheduled
    rest = scheduled[scheduled.index(leftover):]
    if leftover_tile is None:
        assert "T.unroll(T.int64(2))" not in rest, rest
    else:
        assert re.search(leftover_tile, rest), rest
    assert "partition" not in schedule_kernel(kernel, 256).script()  # AVX-512: 7 pixels divide
    _assert_validates(compile_package, path, "x86_64-avx2")


@pytest.mark.parametrize("size", [1, 2])
def test_fewer_pixels_than_a_6_pixel_tile_keep_the_other_tiles(tmp_path, size):
    path = save_torchscript(*residual_conv(128, size), tmp_path / "conv.pt")
    kernel = _first_convolution(path)
    scheduled = schedule_kernel(kernel, 96)
    assert scheduled is not None  # not left to MetaSchedule's sampled schedules
    assert "partition" not in scheduled.script()


def token_linear(tokens: int = 197, features: int = 64, outputs: int = 128):
    """A Linear layer and GELU over a ViT's 197 tokens (a prime): (model, inputs)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, outputs), nn.GELU()).eval()
    return model, [TensorSpec("x", (1, tokens, features))]


def _kernel(path, prefix: str, target: str = "cpu"):
    return next(f for gv, f in prim_funcs(_fused(path, target))
                if gv.name_hint.startswith(prefix))


@pytest.mark.parametrize("channels, width, lanes, expected", [
    (40, 32, 256, (16, 8)),  # 16 ymm accumulators on AVX-512, not 32 (spilled)
    (24, 28, 256, (14, 8)),
    (1024, 197, 256, (1, 32)),  # alone, only one row of 197 divides them
])
def test_tiles_count_accumulators_in_registers(channels, width, lanes, expected):
    from deploytool.schedules.cpu import _registers

    assert _tile_sizes(channels, width, lanes) == expected
    assert _registers(*expected, lanes) <= lanes // (16 if lanes == 256 else 8)


@pytest.mark.parametrize("lanes, tile", [(256, (8, 32)), (96, (6, 16))])
def test_rows_a_tile_does_not_divide_get_full_tiles_then_a_partial_one(lanes, tile):
    # 197 rows: 24 tiles of 8 rows (AVX-512), then one of 5; AVX2: 32 tiles of 6, one of 5
    assert _tile_sizes(128, 197, lanes, remainder=True) == tile


@pytest.mark.slow
@pytest.mark.parametrize("target, lanes, pixels, full", [("cpu", 256, 8, 24),
                                                         ("x86_64-avx2", 96, 6, 32)])
def test_a_prime_number_of_rows_is_tiled_with_a_partial_tile(compile_package, tmp_path, target,
                                                             lanes, pixels, full):
    path = save_torchscript(*token_linear(), tmp_path / "tokens.pt")
    scheduled = schedule_kernel(_kernel(path, "fused_matmul", target), lanes).script()
    assert f"T.unroll(T.int64({pixels}))" in scheduled, scheduled
    assert f"in range(T.int64({full}), T.int64({full + 1}))" in scheduled, scheduled  # the rest
    assert "T.parallel(T.int64(" in scheduled
    _assert_validates(compile_package, path, target)


def classifier(outputs: int = 10, features: int = 64):
    """A Linear layer whose outputs do not split into vectors: (model, inputs)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Linear(features, outputs).eval(), [TensorSpec("x", (1, features))]


def test_outputs_that_do_not_split_into_vectors_are_padded(tmp_path):
    """10 outputs: the weight is packed padded to 16 channels at compile time (the padding
    block marked for it), the kernel computes 16, the bias add writes 10."""
    path = save_torchscript(*classifier(), tmp_path / "classifier.pt")
    scheduled = schedule_kernel(_kernel(path, "fused_matmul"), 256).script()
    assert "T.vectorized(T.int64(8))" in scheduled or "T.vectorized(T.int64(16))" in scheduled
    assert '"meta_schedule.layout_rewrite_preproc": True' in scheduled, scheduled
    assert "T.if_then_else(v1 < T.int64(10)" in scheduled, scheduled


@pytest.mark.slow
def test_attention_scores_over_197_tokens_are_tiled_padded_to_whole_vectors(compile_package,
                                                                            tmp_path):
    """Q K^T over 197 tokens: K^T copied into 208 columns (13 vectors), tiles of 16 rows then
    one of 5, the scaling by 1/sqrt(d) after the tiles in whole vectors and a partial one."""
    import torch
    from torch import nn

    class Scores(nn.Module):
        def forward(self, q, k):
            return torch.matmul(q, k.transpose(-1, -2)) / 8.0

    inputs = [TensorSpec("q", (1, 4, 197, 64)), TensorSpec("k", (1, 4, 197, 64))]
    path = save_torchscript(Scores(), inputs, tmp_path / "scores.pt")
    scheduled = schedule_kernel(_kernel(path, "fused_matmul"), 256).script()
    assert "T.int64(208)" in scheduled and 'T.sblock("lv' in scheduled, scheduled
    assert "range(T.int64(12), T.int64(13))" in scheduled, scheduled  # the last 5 rows
    _assert_validates(compile_package, path)
    _assert_validates(compile_package, save_torchscript(*classifier(), tmp_path / "c.pt"))


@pytest.mark.slow
def test_convolution_outputs_that_do_not_split_into_vectors_are_padded(compile_package,
                                                                      tmp_path):
    """The small CNN's 3x3 convolution to 12 channels computes 16 (its weight padded with zeros
    at compile time), register-tiled, and its epilogue slices them back to 12."""
    from deploytool.testing.architectures import small_cnn

    path = save_torchscript(*small_cnn(), tmp_path / "small_cnn.pt")
    kernel = _kernel(path, "fused_conv2d_strided_slice")
    assert tuple(int(d) for d in kernel.params[1].ty.shape) == (3, 3, 3, 16)
    scheduled = schedule_kernel(kernel, 256)
    assert scheduled is not None and "T.vectorized(T.int64(16))" in scheduled.script()
    _assert_validates(compile_package, path)


def test_a_gate_over_a_whole_feature_map_runs_after_the_tiles(tmp_path):
    """Squeeze-and-excitation's expanding 1x1 convolution of one pixel, its bias and sigmoid
    once per channel, then the multiplication of the feature map in a pass of its own."""
    from conftest import squeeze_excite

    path = save_torchscript(*squeeze_excite(), tmp_path / "se.pt")
    gate = next(f for gv, f in prim_funcs(_fused(path)) if "multiply" in gv.name_hint)
    scheduled = schedule_kernel(gate, 256).script()
    multiply = scheduled.split('T.sblock("T_multiply")')[1]
    assert "T.sigmoid" not in multiply, scheduled
    assert "ax0_ax1_fused in T.parallel(T.int64(28))" in scheduled, scheduled  # rows
    assert 'T.sblock("compute")' in scheduled  # the sigmoid, per channel


def hard_activations():
    """MobileNetV3's activations between convolutions: hardswish, and hardsigmoid gating."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Conv2d(16, 16, 3, 1, 1)
            self.second = nn.Conv2d(16, 16, 1)

        def forward(self, x):
            y = nn.functional.hardswish(self.first(x))
            return self.second(y) * nn.functional.hardsigmoid(y)

    torch.manual_seed(0)
    return Model().eval(), [TensorSpec("x", (1, 16, 16, 16))]


def test_hard_activations_stay_channels_last(tmp_path):
    # clip has no layout rule in TVM: written as maximum and minimum, hardswish and hardsigmoid
    # fuse into the convolutions' epilogues, with no transposes to NCHW and back between them.
    path = save_torchscript(*hard_activations(), tmp_path / "hard.pt")
    names = [gv.name_hint for gv, _ in prim_funcs(_fused(path))]
    assert not [n for n in names if "clip" in n], names
    assert len([n for n in names if "transpose" in n]) <= 2, names  # the model's edges
