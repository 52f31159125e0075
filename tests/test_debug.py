"""Debug aids of compile: --dump-ir (the IR at each step, the generated code) and --keep-temps."""

import hashlib
import platform
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploytool import compiler
from deploytool.build.dump import dump_summary, start_dump
from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.package.manifest import atomic_folder


def compile_cli(*args):
    return CliRunner().invoke(main, ["compile", *map(str, args)])


@pytest.mark.slow
def test_dump_ir_writes_each_step_and_the_assembly(mlp_pt, tmp_path):
    dump, out = tmp_path / "ir", tmp_path / "pkg"
    result = compile_cli(mlp_pt, "-o", out, "--dump-ir", dump, "--no-java")
    assert result.exit_code == 0, result.output
    assert f"IR dumped to {dump}: relax-imported.py, relax-final.py" in result.output
    imported = (dump / "relax-imported.py").read_text()
    assert "@R.function" in imported and "def main(" in imported and "R.matmul" in imported
    final = (dump / "relax-final.py").read_text()
    assert "vm.builtin.check_tensor_info" in final and "R.vm.alloc_tensor" in final
    assert "R.matmul" not in final  # every operator is a kernel call now
    kernels = {p.stem: p.read_text() for p in (dump / "tir").glob("*.py")}
    matmuls = [name for name in kernels if name.startswith("fused_matmul")]
    assert len(matmuls) >= 3, sorted(kernels)
    for name, text in kernels.items():
        assert "@T.prim_func" in text and f"def {name}(" in text
    assert any("T.vectorized" in kernels[name] for name in matmuls)  # scheduled
    asm = (dump / "model.s").read_text()
    assert "\tret" in asm and any(f"{name}:" in asm for name in matmuls)
    if platform.machine() == "x86_64":
        assert re.search(r"\tv(fmadd\w*|mulps|addps)\s", asm)
    assert "define " in (dump / "model.ll").read_text()
    assert "@main:" in (dump / "vm.txt").read_text()
    assert (out / "model.so").is_file() and not list(out.rglob("relax-*.py"))


@pytest.mark.slow
def test_dump_ir_leaves_the_library_unchanged(mlp_pt, tmp_path):
    from deploytool.build.cpu_pipeline import schedule_build
    from deploytool.build.library import build_library
    from deploytool.frontends.load import load_model, to_onnx
    from deploytool.importer.relax import import_model
    from deploytool.targets import load_target

    mod = import_model(to_onnx(load_model(mlp_pt, None))).mod
    target = load_target("cpu").resolved()
    digests = []
    for name, dump in (("plain", None), ("dumped", tmp_path / "ir")):
        build_library(mod, target, tmp_path / f"{name}.so", schedule_build(target)[0], dump)
        digests.append(hashlib.sha256((tmp_path / f"{name}.so").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert (tmp_path / "ir" / "relax-final.py").is_file()


def test_a_new_dump_clears_the_previous_one(tmp_path):
    import tvm

    (tmp_path / "tir").mkdir()
    (tmp_path / "tir" / "old_kernel.py").write_text("stale")
    (tmp_path / "model.cu").write_text("stale")
    (tmp_path / "notes.txt").write_text("the user's")
    start_dump(tmp_path, tvm.IRModule())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "relax-imported.py", "tir"]
    assert dump_summary(tmp_path) == (f"  IR dumped to {tmp_path}: relax-imported.py, "
                                      "tir/ (0 kernels)")


def fail_build(*_args, **_kwargs):
    raise DeploytoolError("the build broke", "Try again")


def test_keep_temps_keeps_the_scratch_folder_of_a_failed_compile(mlp_pt, tmp_path, monkeypatch):
    monkeypatch.setattr(compiler, "build_library", fail_build)
    result = compile_cli(mlp_pt, "-o", tmp_path / "pkg", "--keep-temps", "--no-java")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: the build broke")
    note = "scratch folder kept at "
    kept = [line for line in result.stderr.splitlines() if line.startswith(note)]
    assert len(kept) == 1, result.stderr
    scratch = Path(kept[0].removeprefix(note))
    assert scratch.parent == tmp_path and (scratch / "model.onnx").is_file()
    assert not (tmp_path / "pkg").exists()


def test_without_keep_temps_a_failed_compile_leaves_nothing(mlp_pt, tmp_path, monkeypatch):
    monkeypatch.setattr(compiler, "build_library", fail_build)
    result = compile_cli(mlp_pt, "-o", tmp_path / "pkg", "--no-java")
    assert result.exit_code == 1, result.output
    assert "scratch folder kept" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_keep_temps_changes_nothing_on_success(tmp_path):
    with atomic_folder(tmp_path / "pkg", force=False, keep_on_failure=True) as scratch:
        (scratch / "model.so").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]
    assert (tmp_path / "pkg" / "model.so").is_file()


def test_the_kept_folder_is_noted_on_any_error(tmp_path):
    with pytest.raises(ValueError) as raised:
        with atomic_folder(tmp_path / "pkg", force=False, keep_on_failure=True) as scratch:
            raise ValueError("a bug")
    assert raised.value.__notes__ == [f"scratch folder kept at {scratch}"]
    assert scratch.is_dir()


def test_kernels_with_names_too_long_for_a_file_are_dumped_under_distinct_short_names(tmp_path):
    """A fused int8 kernel names every operator it holds: MobileNetV2's reached 270 characters,
    past the file system's 255-byte limit."""
    import tvm
    from tvm.script import tirx as T

    from deploytool.build.dump import _write_kernels

    @T.prim_func
    def kernel(a: T.Buffer((4,), "float32")):
        a[0] = T.float32(1)

    names = ["fused_conv2d_" + "subtract_cast_multiply_" * 12 + end
             for end in ("prepacked", "weight_prepack")]
    mod = tvm.IRModule({name: kernel.with_attr("global_symbol", name) for name in names})
    _write_kernels(mod, tmp_path / "tir")
    files = sorted(p.name for p in (tmp_path / "tir").iterdir())
    assert len(files) == 2 and all(len(f) <= 255 for f in files)
    assert all(f.startswith("fused_conv2d_subtract_cast_multiply_") for f in files)
    assert sorted(f.rsplit("_", 1)[-1] for f in files) == ["prepack.py", "prepacked.py"]
