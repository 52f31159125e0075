"""--precision bf16 and int8 on CPUs with AMX: which products take the AMX tiles, the code they
compile to, and packages that agree with their peers in ONNX Runtime (where this CPU has AMX)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import attention_net, compile_traced, grouped_net, groups_of_8_net

from deploytool.cli import main
from deploytool.targets import load_target, machine_cpu_flags

AMX_TARGET = "x86_64-amx"
HAS_AMX = {"amx_bf16", "amx_tile"} <= machine_cpu_flags()


def _products():
    """Convolutions the tile reads in several ways: 3x3 over 48 input channels (one chunk of
    32 and 16 more), 1x1 over 64, 3x3 with stride 2 and dilation 2 to 48 channels (three
    accumulator tiles); a linear layer over the pooled pixels (one row)."""
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(48, 64, 3, padding=1)
            self.b = torch.nn.Conv2d(64, 64, 1)
            self.c = torch.nn.Conv2d(64, 48, 3, stride=2, padding=2, dilation=2)
            self.fc = torch.nn.Linear(48, 10)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = torch.relu(self.b(y)) + y
            return self.fc(self.c(y).mean((2, 3)))

    return Net().eval(), (1, 48, 28, 28)


def _stem():
    """A stem's 7x7 convolution with stride 2 over 3 channels (padded to 4: each kernel row's
    7 x 4 values read as one tile row), then a 3x3 one over its 32."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 7, stride=2, padding=3), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 16, 3, padding=1)).eval(), (1, 3, 32, 32)


def _tokens():
    """A transformer's feed-forward block over 197 tokens (padded to tiles of 16 rows)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(),
                               torch.nn.Linear(96, 80)).eval(), (1, 197, 64)


def _token_blocks():
    """A feed-forward block over 64 tokens: whole tiles of 32 rows x 32 columns of sums, each
    input and weight tile read into two products."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 64)).eval(), (1, 64, 64)


def _row_pairs():
    """Convolutions whose tiles take two output rows: 3x3 over 64 channels at 32x32, then in
    2 groups of 64 with stride 2 (the second row's input two rows down), then 1x1."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(128, 128, 3, stride=2, padding=1, groups=2),
                               torch.nn.ReLU(), torch.nn.Conv2d(128, 32, 1)).eval(), (1, 64, 32, 32)


def _narrow():
    """1x1 convolutions over rows narrower than a tile, a tile of both rows of 6 pixels; a 3x3
    one between them, its padded rows flattened into one tile."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(32, 64, 1), torch.nn.ReLU(),
                               torch.nn.Conv2d(64, 48, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(48, 32, 1)).eval(), (1, 32, 2, 6)


def _short_rows():
    """3x3 convolutions over rows of 7 (a 224x224 model's last stage), flattened into tiles of
    16 positions of the padded rows."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(32, 48, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(48, 32, 3, padding=1)).eval(), (1, 32, 7, 7)


def _saved(module, shape, path):
    import torch

    torch.jit.save(torch.jit.trace(module, torch.zeros(shape)), str(path))
    return path


# precision: (manifest count of its products, tuning count, AMX instruction, the fallback's)
PRECISIONS = {"bf16": ("bf16_products", "bf16", "tdpbf16ps", "vdpbf16ps"),
              "int8": ("integer_products", "integer", "tdpbusd", "vpdpbusd")}


@pytest.mark.slow
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("model", [_products, _stem, _tokens, _narrow, grouped_net,
                                   _short_rows, attention_net, _token_blocks, _row_pairs])
def test_products_take_the_amx_tile_and_compile_to_its_instructions(tmp_path, model, precision):
    """Every bf16 or int8 product is scheduled in AMX tiles, which LLVM compiles to tile loads
    and tdpbf16ps or tdpbusd, not to the vdpbf16ps or vpdpbusd fallback; the tiles are
    configured (ldtilecfg) only where the thread's configuration (sttilecfg) differs."""
    counted, tuning, instruction, fallback = PRECISIONS[precision]
    module, shape = model()
    path = _saved(module, shape, tmp_path / "m.pt")
    out, dump = tmp_path / "pkg", tmp_path / "dump"
    outcome = CliRunner().invoke(main, [
        "compile", str(path), "-i", f"x:{'x'.join(map(str, shape))}:float32", "--precision",
        precision, "--target", AMX_TARGET, "-o", str(out), "--no-java", "--dump-ir", str(dump)])
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    products = manifest["precision"][counted]
    assert products >= 2 and manifest["tuning"]["amx"] == manifest["tuning"][tuning] == products
    assert f"{instruction} (AMX-" in manifest["precision"]["instructions"]
    asm = (dump / "model.s").read_text()
    assert asm.count(instruction) >= products and "tileloadd" in asm and "tilestored" in asm
    assert asm.count("tilezero") >= products  # the sums start in the tiles, not from memory
    assert fallback not in asm
    assert asm.count("ldtilecfg") == asm.count("sttilecfg") >= products


@pytest.mark.slow
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("model", [_token_blocks, _row_pairs])
def test_products_of_whole_blocks_take_tiles_of_four_sums(tmp_path, precision, model):
    """Each product of 64 tokens (32 x 32 sums) and each convolution of an even height (two
    output rows x 32 channels) takes the 2 x 2 tile: four accumulator tiles (tmm0-3) summing
    two input tiles (tmm4-5) by two weight tiles (tmm6-7); the 197-token block does not."""
    counted, _, instruction, _ = PRECISIONS[precision]
    module, shape = model()
    manifest, dump = compile_traced(tmp_path, module, shape, "--precision", precision,
                                    "--target", AMX_TARGET)
    quads = [k.name for k in (dump / "tir").glob("*.py") if "_quad" in k.read_text()]
    assert len(quads) == manifest["precision"][counted] >= 2, quads
    asm = (dump / "model.s").read_text()
    for accumulator, operands in enumerate(["%tmm6, %tmm4", "%tmm7, %tmm4", "%tmm6, %tmm5",
                                            "%tmm7, %tmm5"]):
        assert f"{instruction}\t{operands}, %tmm{accumulator}" in asm
    module, shape = _tokens()
    (tmp_path / "197").mkdir()
    _, dump = compile_traced(tmp_path / "197", module, shape, "--precision", precision,
                             "--target", AMX_TARGET)
    assert not any("_quad" in k.read_text() for k in (dump / "tir").glob("*.py"))


def test_the_amx_target_has_the_tiles_and_bf16():
    flags = set(load_target(AMX_TARGET).cpu_features())
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni"} <= flags


@pytest.mark.slow
@pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX")
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("model", [_products, _stem, _tokens, _narrow, grouped_net,
                                   _short_rows, attention_net, _token_blocks, _row_pairs])
def test_an_amx_package_agrees_with_its_peer(tmp_path, model, precision):
    """Run here, the package's outputs match ONNX Runtime's: computing the same bfloat16
    products in float32 (only the order of the sums differs), or the same integers from the
    QDQ model; and its self-test passes."""
    import subprocess

    module, shape = model()
    path = _saved(module, shape, tmp_path / "m.pt")
    out = tmp_path / "pkg"
    outcome = CliRunner().invoke(main, [
        "compile", str(path), "-i", f"x:{'x'.join(map(str, shape))}:float32", "--precision",
        precision, "-o", str(out), "--no-java"])
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tuning"]["amx"] == manifest["precision"][PRECISIONS[precision][0]]
    peer = next(a for a in manifest["validation"]["agreements"]
                if a["reference"].startswith(f"onnxruntime-{precision}"))
    assert peer["cosine"] > 0.99999
    selftest = subprocess.run([str(out / "bin" / "deploytool-run"), str(out), "--self-test"],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr


def test_a_stem_reads_a_kernel_row_as_one_tile_row():
    """Where a kernel row's values are contiguous (no dilation, the input's channels all read)
    and fit 64 bytes, the tile reads them at once: 7 x 4 bf16 values are 56 bytes."""
    from deploytool.schedules import amx
    from deploytool.schedules.dot_products import AMX_BF16, AMX_INT8

    def shape(kernel, dilation, channels, instruction):
        return amx.ProductShape(kernel, dilation, 2, 14, 2, channels, True, instruction, True)

    source = amx._implementation(shape((7, 7), (1, 1), 4, AMX_BF16)).script()
    assert source.count("deploytool_amx_bf16_rest2") == 1  # a call per kernel row
    assert "deploytool_amx_bf16_step2" not in source
    assert '"deploytool_amx_configure", 14, 56' in source
    int8 = amx._implementation(shape((3, 3), (1, 1), 4, AMX_INT8)).script()
    assert '"deploytool_amx_configure", 14, 12' in int8


def _weighty():
    """Two int8 convolutions: 32 channels at 16x16, whose output outweighs its weight, and 128
    channels at 4x4, whose weight outweighs its output 18 times."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 128, 3, stride=4, padding=1),
                               torch.nn.ReLU(), torch.nn.Conv2d(128, 128, 3, padding=1)
                               ).eval(), (1, 32, 16, 16)


def _int8_kernels(target: str, model):
    """The fused convolution kernels of ``model()`` quantized to int8."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from deploytool.build.cpu_pipeline import fuse, prim_funcs
    from deploytool.precision.calibration import calibration_samples
    from deploytool.precision.quantize import quantize_int8
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.tensors import TensorSpec

    module, shape = model()
    image = TensorSpec("x", list(shape), "float32")
    exported = onnx.load_from_string(_onnx_bytes(module, image.shape))
    quantized = quantize_int8(exported, calibration_samples([image], None))
    mod = fuse(from_onnx(quantized, keep_params_in_input=False),
               tuning_target(load_target(target)))
    return {gv.name_hint: f for gv, f in prim_funcs(mod) if "conv2d" in gv.name_hint}


def _onnx_bytes(model, shape) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(shape),), buffer, input_names=["x"], dynamo=False)
    return buffer.getvalue()


@pytest.mark.parametrize("target, instruction", [(AMX_TARGET, "tdpbusd"),
                                                 ("x86_64-avx512-bf16", "vpdpbusd")])
def test_tiles_go_channel_tiles_first_where_the_weight_outweighs_the_output(target, instruction):
    """The 16x16 convolution's threads split its rows; the 4x4 ones' split the channel tiles,
    so that each thread reads a weight slice once rather than once a row of pixels."""
    import re

    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.schedules.products import schedule_dot_product, target_instructions

    instructions = target_instructions(tuning_target(load_target(target)))
    first = {}
    for name, func in _int8_kernels(target, _weighty).items():
        scheduled, used = schedule_dot_product(func, instructions)
        assert used is not None and used.name.split()[0] == instruction, (name, used)
        loops = re.findall(r"for (\w+) in T.parallel", scheduled.script())
        first[name] = loops[-1].split("_")[0]  # the outermost loop fused into the parallel one
    assert len(first) == 3, first
    assert sorted(first.values()) == ["ff", "ff", "nn"], first


def test_a_narrow_pointwise_convolution_takes_whole_rows_in_a_tile():
    """At 2x6, each 1x1 convolution's tile holds both rows (12 pixels, contiguous in its input
    and its sums); the 3x3 one's the 16 positions of its flattened rows (2 x 8)."""
    import re

    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.schedules.products import schedule_dot_product, target_instructions

    instructions = target_instructions(tuning_target(load_target(AMX_TARGET)))
    rows = []
    for func in _int8_kernels(AMX_TARGET, _narrow).values():
        scheduled, _ = schedule_dot_product(func, instructions)
        rows += re.findall(r'"deploytool_amx_configure", (\d+),', scheduled.script())
    assert sorted(rows) == ["12", "12", "16"], rows


@pytest.mark.parametrize("target, instruction", [(AMX_TARGET, "tdpbusd"),
                                                 ("x86_64-avx512-bf16", "vpdpbusd")])
def testgrouped_net_convolutions_of_whole_vectors_take_the_integer_tiles(target, instruction):
    """Where the target has a dot-product tile, a grouped convolution whose groups fill whole
    vectors sums in int32 in it; an AMX tile of the groups of 32 takes both of a group's
    vectors, one of the groups of 16 one vector."""
    import re

    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.schedules.products import schedule_dot_product, target_instructions

    instructions = target_instructions(tuning_target(load_target(target)))
    grouped = {}
    for name, func in _int8_kernels(target, grouped_net).items():
        scheduled, used = schedule_dot_product(func, instructions)
        assert used is not None and used.name.split()[0] == instruction, (name, used)
        if 'T.sblock("group_conv2d_nhwc")' in func.script():
            grouped[name] = scheduled.script()
    assert len(grouped) == 2, list(grouped)
    if instruction == "tdpbusd":
        tiles = sorted(int(v) for script in grouped.values()
                       for v in re.findall(r"deploytool_amx_int8_zero(\d)", script))
        assert tiles == [1, 2], tiles


def testgrouped_net_convolutions_stay_float32_without_a_dot_product_tile():
    """On an AVX-512 CPU without VNNI the float32 grouped tile is the faster: the grouped
    convolutions are not integer products there."""
    kernels = _int8_kernels("x86_64-avx512", grouped_net).values()
    grouped = [f for f in kernels if 'T.sblock("group_conv2d_nhwc")' in f.script()]
    assert len(grouped) == 2 and len(kernels) == 4
    for func in grouped:
        assert "int8" not in {str(getattr(p, "dtype", "")) for p in func.params}
    assert all("int8" in {str(getattr(p, "dtype", "")) for p in f.params}
               for f in kernels if f not in grouped)


@pytest.mark.parametrize("target", [AMX_TARGET, "x86_64-avx512-bf16"])
def test_groups_of_8_channels_take_vpdpbusd_on_256_bit_registers(target):
    """RegNetY's groups of 8 channels are too narrow for AMX's tiles and 512-bit vectors: they
    sum in vpdpbusd's 8 lanes, each vector one group."""
    from deploytool.schedules.dot_products import VNNI_8
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.schedules.products import schedule_dot_product, target_instructions

    instructions = target_instructions(tuning_target(load_target(target)))
    used = {}
    for func in _int8_kernels(target, groups_of_8_net).values():
        grouped = 'T.sblock("group_conv2d_nhwc")' in func.script()
        used[grouped] = schedule_dot_product(func, instructions)[1]
    assert used[True] is VNNI_8 and used[False] is not VNNI_8, used


@pytest.mark.parametrize("batch", [1, 2])
def test_convolutions_over_short_rows_take_tiles_of_flattened_rows(batch):
    """At 7x7, each 3x3 convolution's tile holds 16 positions of the flat padded rows (7 of a
    row before), its kernel rows read as input channels: a 1 x 3 kernel over 3 x 32 and 3 x 48
    channels; each image of a batch its own long row."""
    import re

    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.schedules.products import schedule_dot_product, target_instructions

    instructions = target_instructions(tuning_target(load_target(AMX_TARGET)))
    module, shape = _short_rows()
    rows, inputs = [], []
    for func in _int8_kernels(AMX_TARGET, lambda: (module, (batch, *shape[1:]))).values():
        scheduled, _ = schedule_dot_product(func, instructions)
        rows += re.findall(r'"deploytool_amx_configure", (\d+),', scheduled.script())
        inputs += re.findall(rf"T.Buffer\(\(T.int64\({batch}\), T.int64\(1\), T.int64\((\d+)\), "
                             r"T.int64\((\d+)\)\), \"uint8\"\)", func.script())
    assert rows == ["16", "16"], rows
    # 4 tiles of 16 of the 7 x 9 positions (7 tiles of 7 pixels unflattened), 2 more read
    assert sorted(inputs) == [("66", "144"), ("66", "96")], inputs
