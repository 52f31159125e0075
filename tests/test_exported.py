"""The torch.export (.pt2) frontend: loading, input specs, program fixes, errors."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from deploytool.cli import main
from deploytool.frontends.exported import fix_cumsum_dtype, fix_negative_select, load_exported
from deploytool.frontends.load import load_model
from deploytool.testing.zoo import save_exported, two_io


def test_inputs_come_from_the_program(tmp_path):
    torch.manual_seed(0)
    model, inputs = two_io()
    path = save_exported(model, inputs, tmp_path / "two.pt2")
    source = load_model(path)
    assert source.format == "torch.export"
    assert [(s.name, s.shape, s.dtype) for s in source.inputs] == [
        (s.name, s.shape, s.dtype) for s in inputs]


def test_mismatched_input_is_refused(tmp_path):
    model, inputs = two_io()
    path = save_exported(model, inputs, tmp_path / "two.pt2")
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "pkg"),
                                       "--input", "x:4x8:float32", "--input", "side:2x6"])
    assert result.exit_code == 1
    assert "does not match the exported program's inputs" in result.output
    assert "Drop --input" in result.output
    assert not (tmp_path / "pkg").exists()


def test_a_file_that_is_not_an_archive_is_refused(tmp_path):
    path = tmp_path / "bad.pt2"
    path.write_bytes(b"not a zip")
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "pkg")])
    assert result.exit_code == 1
    assert "is not a torch.export archive (not a zip archive)" in result.output
    assert "torch.export.save" in result.output
    assert "Traceback" not in result.output


def test_inspect_lists_aten_operators(tmp_path):
    model, inputs = two_io()
    path = save_exported(model, inputs, tmp_path / "two.pt2")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "operators (ATen)" in result.output and "aten.addmm.default" in result.output


def test_negative_select_is_made_positive_without_changing_results(tmp_path):
    class Last(torch.nn.Module):
        def forward(self, x):
            return x[:, -1] * 2.0

    x = torch.randn(2, 5, 3)
    path = tmp_path / "last.pt2"
    torch.export.save(torch.export.export(Last(), (x,)), str(path))
    program = load_exported(path, None).module.run_decompositions()
    assert fix_negative_select(program) == 1
    selects = [n for n in program.graph.nodes if n.target == torch.ops.aten.select.int]
    assert [n.args[2] for n in selects] == [4]
    torch.testing.assert_close(program.module()(x), x[:, -1] * 2.0)
    assert fix_negative_select(program) == 0


def test_cumsum_of_a_bool_mask_names_its_int64_result():
    class Positions(torch.nn.Module):  # GPT-2's position ids from a mask
        def forward(self, ids):
            return (ids > 3).cumsum(-1) * ids

    ids = torch.arange(8).reshape(1, 8)
    program = torch.export.export(Positions(), (ids,)).run_decompositions()
    assert fix_cumsum_dtype(program) == 1
    cumsum = next(n for n in program.graph.nodes if n.target == torch.ops.aten.cumsum.default)
    assert cumsum.kwargs["dtype"] == torch.int64
    torch.testing.assert_close(program.module()(ids), (ids > 3).cumsum(-1) * ids)
    assert fix_cumsum_dtype(program) == 0


def test_kernels_without_a_root_block_get_one_for_weight_packing():
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from deploytool.build.cpu_pipeline import has_blocks, pack_weights, prim_funcs

    builder = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, 8), "int64"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit_output(relax.op.cumsum(x, axis=1))
        builder.emit_func_output(y)
    with tvm.target.Target({"kind": "llvm"}):
        mod = relax.backend.DispatchSortScan()(builder.get())  # as the build dispatches it
    assert [has_blocks(f) for _, f in prim_funcs(mod)] == [False]  # TVM writes cumsum so
    packed = pack_weights(mod)
    assert all(has_blocks(f) for _, f in prim_funcs(packed))
