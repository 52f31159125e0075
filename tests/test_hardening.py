"""Hostile inputs: damaged packages and manifests, malformed arguments, foreign model files,
interrupted and concurrent runs. Each must end in one ``Error:`` line (exit 1, or 2 for a
malformed argument, 130 for Ctrl-C), no traceback, and nothing left behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import copy_package

from deploytool import compiler
from deploytool.cli import main
from deploytool.common import exclusive_lock, note_interrupt, was_interrupted
from deploytool.errors import DeploytoolError
from deploytool.package.manifest import (
    Package,
    ReadOnlyPackage,
    atomic_folder,
    check_manifest,
    load_package,
    remove_leftovers,
)
from deploytool.tensors import TensorSpec, check_memory
from deploytool.tuning.database import lock_database

REPO = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result, code: int = 1, *fragments: str) -> str:
    """Assert the command failed with ``code``, printing one Error: line and no traceback;
    return that line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too) with a file's bytes."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_package(root: Path) -> Path:
    """A folder whose manifest passes every check, with a runner that fails if it is run."""
    (root / "bin").mkdir(parents=True)
    (root / "testdata").mkdir()
    runner = root / "bin" / "deploytool-run"
    runner.write_text("#!/bin/sh\necho the fake runner ran >&2\nexit 3\n")
    runner.chmod(0o755)
    (root / "model.so").write_bytes(b"not a library")
    np.save(root / "testdata" / "input0.npy", np.zeros((1, 4), np.float32))
    np.save(root / "testdata" / "output0.npy", np.zeros((1, 2), np.float32))
    files = {name: sha((root / name).read_bytes())
             for name in ("model.so", "testdata/input0.npy", "testdata/output0.npy")}
    manifest = {
        "format_version": 1,
        "model": {"name": "m", "file": "m.pt", "format": "torchscript", "sha256": "0" * 64},
        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": [1, 2], "dtype": "float32"}],
        "input_ranges": {},
        "target": {"name": "cpu", "target": {"kind": "llvm"}},
        "runtime": {"arch": platform.machine(), "cpu_features": [], "device": "cpu"},
        "compile_options": {"model": str(root / "missing.pt")},
        "self_test": {"reference": "torchscript", "atol": 0, "rtol": 0,
                      "inputs": [{"name": "x", "file": "testdata/input0.npy"}],
                      "outputs": [{"name": "output", "file": "testdata/output0.npy"}]},
        "files": files,
        "validation": None,
        "benchmarks": None,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _set(path: str, value):
    def change(manifest):
        *parents, last = path.split(".")
        entry = manifest
        for key in parents:
            entry = entry[key]
        entry[last] = value
    return change


def _drop(key: str):
    return lambda manifest: manifest.pop(key)


# name -> (manifest change or raw text, fragment of the error)
DAMAGE = {
    "not json": ("{\"format_version\": 1, \"inputs\": [", "not valid JSON"),
    "empty": ("", "not valid JSON"),
    "binary": (b"\xff\xfe\x00garbage", "not valid JSON"),
    "nested too deep": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "a list": ("[1, 2, 3]", "not a JSON object"),
    "no format": (_drop("format_version"), "package format None"),
    "newer format": (_set("format_version", 2), "package format 2"),
    "no inputs": (_drop("inputs"), "'inputs' is missing"),
    "no model": (_drop("model"), "'model' is missing"),
    "no outputs": (_drop("outputs"), "'outputs' is missing"),
    "no runtime": (_drop("runtime"), "'runtime' is missing"),
    "no files": (_drop("files"), "'files' is missing"),
    "inputs a string": (_set("inputs", "x:1x4"), "'inputs' is str, not list"),
    "no input": (_set("inputs", []), "'inputs' is empty"),
    "bad shape": (_set("inputs", [{"name": "x", "shape": ["1x"], "dtype": "float32"}]),
                  "invalid tensor entry"),
    "negative dim": (_set("outputs", [{"name": "y", "shape": [-1], "dtype": "float32"}]),
                     "invalid tensor entry"),
    "bad dtype": (_set("inputs", [{"name": "x", "shape": [1], "dtype": "complex512"}]),
                  "invalid tensor entry"),
    "tensor not an object": (_set("outputs", [7]), "invalid tensor entry"),
    "sha256 a number": (_set("model.sha256", 5), "'model.sha256'"),
    "no arch": (_set("runtime.arch", None), "'runtime.arch'"),
    "model a list": (_set("model", []), "'model' is list, not dict"),
    "files a list": (_set("files", ["model.so"]), "'files' is list, not dict"),
    "files ..": (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}),
                 "not a path inside the package"),
    "files absolute": (lambda m: m["files"].update({"/etc/passwd": "0" * 64}),
                       "not a path inside the package"),
    "files backslash": (lambda m: m["files"].update({"..\\x": "0" * 64}),
                        "not a path inside the package"),
    "files without model.so": (lambda m: m["files"].pop("model.so"), "leaves out model.so"),
    "files without a vector": (lambda m: m["files"].pop("testdata/output0.npy"),
                               "leaves out testdata/output0.npy"),
    "digest not hex": (lambda m: m["files"].update({"model.so": "xyz"}), "not a sha256 digest"),
    "self_test a string": (_set("self_test", "yes"), "'self_test' is str, not dict"),
    "vector outside": (_set("self_test.inputs", [{"name": "x", "file": "../x.npy"}]),
                       "leaves out ../x.npy"),
    "input range": (_set("input_ranges", {"x": ["a", "b"]}), "'input_ranges.x'"),
}


def _damage(package: Path, damage) -> None:
    manifest = package / "manifest.json"
    if isinstance(damage, bytes):
        manifest.write_bytes(damage)
    elif isinstance(damage, str):
        manifest.write_text(damage)
    else:
        data = json.loads(manifest.read_text())
        damage(data)
        manifest.write_text(json.dumps(data))


# ------------------------------------------------------------------ damaged manifests

def test_the_fake_package_passes_the_checks(tmp_path):
    package = load_package(fake_package(tmp_path / "p"))
    assert check_manifest(package.manifest) is None


@pytest.mark.parametrize("command", ["validate", "inspect", "bench"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_manifest_is_named_in_one_line(kind, command, tmp_path):
    package = fake_package(tmp_path / "p")
    damage, fragment = DAMAGE[kind]
    _damage(package, damage)
    before = tree(tmp_path)
    line = one_error(invoke(command, package), 1, fragment)
    assert "manifest.json is damaged" in line or "package format" in line
    assert tree(tmp_path) == before  # nothing written, the manifest not "repaired"


def test_a_manifest_that_is_a_folder_or_missing(tmp_path):
    package = fake_package(tmp_path / "p")
    (package / "manifest.json").unlink()
    one_error(invoke("validate", package), 1, "is not a deploytool package")
    (package / "manifest.json").mkdir()
    one_error(invoke("inspect", package), 1, "is not a deploytool package")
    one_error(invoke("validate", tmp_path / "nothing"), 1, "is not a deploytool package")


@pytest.mark.parametrize("tamper, fragment", [
    (lambda p: (p / "model.so").write_bytes(b"another library"), "model.so does not match"),
    (lambda p: (p / "model.so").unlink(), "model.so is missing"),
    (lambda p: (p / "testdata" / "output0.npy").write_bytes(b"x"),
     "testdata/output0.npy does not match"),
    (lambda p: ((p / "model.so").unlink(), (p / "model.so").symlink_to("/bin/sh")),
     "model.so links outside the package"),
])
@pytest.mark.parametrize("command", ["validate", "bench"])
def test_a_damaged_package_never_runs(tamper, fragment, command, tmp_path):
    package = fake_package(tmp_path / "p")
    tamper(package)
    result = invoke(command, package)
    one_error(result, 1, fragment)
    assert "the fake runner ran" not in result.output


def test_a_huge_npy_header_is_refused_before_allocating(tmp_path):
    package = fake_package(tmp_path / "p")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    with open(inputs / "x.npy", "wb") as f:  # a header claiming 4e12 floats, and no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (1, 4_000_000_000_000)})
    one_error(invoke("validate", package, "--inputs", inputs), 1, "is not a valid .npy file")


# ------------------------------------------------------------------ hostile model files

def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a model")


MODEL_FILES = {
    "empty.pt": (b"", "not a TorchScript file"),
    "random.pt": (os.urandom(3000), "not a TorchScript file"),
    "empty.onnx": (b"", "is empty, not an ONNX model"),
    "random.onnx": (bytes(range(256)) * 20, "ONNX"),
    "text.onnx": (b"hello", "ONNX"),
    "empty.pt2": (b"", "is empty, not a torch.export archive"),
    "random.pt2": (os.urandom(3000), "not a torch.export archive"),
    "other.pt2": (_zip, "could not be loaded as a torch.export archive"),
    "folder.pt": (None, "not found"),
}


@pytest.mark.parametrize("command", ["compile", "inspect"])
@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_a_foreign_model_file_is_one_line(name, command, tmp_path, capfd):
    content, fragment = MODEL_FILES[name]
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif callable(content):
        content(path)
    else:
        path.write_bytes(content)
    before = tree(tmp_path)
    args = ["-o", tmp_path / "out"] if command == "compile" else []
    if command == "inspect" and name == "folder.pt":
        fragment = "is not a deploytool package"
    line = one_error(invoke(command, path, *args), 1, fragment)
    assert "Simplify" not in line
    assert tree(tmp_path) == before
    logged = capfd.readouterr()
    assert "Traceback" not in logged.err + logged.out  # torch logs its own, unless silenced


# ------------------------------------------------------------------ hostile arguments

def _numbers(mlp_pt, tmp_path):
    """(command line, exit code, fragment) for arguments that must be refused at once."""
    out = tmp_path / "out"
    pkg = tmp_path / "not-a-package"
    compile_ = ["compile", mlp_pt, "-o", out]
    return [
        (compile_ + ["--atol", "-5"], 2, "--atol is -5"),
        (compile_ + ["--rtol", "-1"], 2, "--rtol is -1"),
        (compile_ + ["--atol", "nan"], 2, "--atol is nan"),
        (compile_ + ["--tol", "output:-1:-1"], 2, "--tol output:-1:-1"),
        (compile_ + ["--tol", "output:1:inf"], 2, "--tol output:1:inf"),
        (compile_ + ["--max-error", "0"], 2, "--max-error is 0"),
        (compile_ + ["--max-error", "-1"], 2, "--max-error is -1"),
        (compile_ + ["--max-error", "inf"], 2, "--max-error is inf"),
        (compile_ + ["--samples", "0"], 2, "--samples is 0"),
        (compile_ + ["--samples", "100000000"], 2, "--samples is 100000000"),
        (compile_ + ["--seed", "-1"], 2, "--seed is -1"),
        (compile_ + ["--range", "x:1:1"], 2, "--range x:1:1"),
        (compile_ + ["--range", "x:nan:1"], 2, "--range x:nan:1"),
        (["validate", pkg, "--atol", "-5"], 2, "--atol is -5"),
        (["validate", pkg, "--max-error", "0"], 2, "--max-error is 0"),
        (["validate", pkg, "--samples", "0"], 2, "--samples is 0"),
        (["validate", pkg, "--tol", "output:-1:-1"], 2, "--tol output:-1:-1"),
        (["bench", pkg, "--threads", "100000"], 2, "--threads is 100000"),
        (["bench", pkg, "--threads", "0"], 2, "--threads is 0"),
        (compile_ + ["--input", "x:1x3x100000x100000"], 1, "more than half of this machine"),
        (compile_ + ["--input", "x:99999999999999999999x1"], 1, "more than half"),
        (compile_ + ["--input", "x:N<=99999999999x512"], 1, "more than half"),
    ]


def test_malformed_numbers_are_refused_in_one_line(mlp_pt, tmp_path):
    for args, code, fragment in _numbers(mlp_pt, tmp_path):
        before = tree(tmp_path)
        one_error(invoke(*args), code, fragment)
        assert tree(tmp_path) == before, args


TARGETS = [
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a7x"},
     "mcpu 'cortex-a7x', which LLVM does not know", "cortex-a72"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswel"},
     "did you mean haswell", "skylake"),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neonn"]},
     "mattr '+neonn', a feature LLVM does not know", "neon"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mattr": ["avx2"]},
     "not +FEATURE or -FEATURE", "+neon"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mattr": "+avx2"},
     "not a list of strings", "mattr"),
    ({"kind": "llvm", "num-cores": 100000}, "num-cores 100000", "1 to 1024"),
    ({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm", "mcpu": "haswel"}},
     "mcpu 'haswel'", "haswell"),
]


@pytest.mark.parametrize("target, what, choice", TARGETS)
def test_a_target_with_an_unknown_cpu_or_feature_names_the_choices(target, what, choice,
                                                                   mlp_pt, tmp_path, capfd):
    result = invoke("compile", mlp_pt, "--target", json.dumps({"target": target}),
                    "-o", tmp_path / "out")
    line = one_error(result, 1, what, choice)
    assert line.count("\n") == 0
    assert "not a recognized feature" not in capfd.readouterr().err  # LLVM's warning, silenced
    assert not (tmp_path / "out").exists()


def test_a_valid_mattr_and_every_shipped_target_load():
    from deploytool.targets import list_targets, load_target

    assert list_targets()
    spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell",
            "mattr": ["+avx2", "-avx512f"]}
    assert load_target(json.dumps({"target": spec})).target["mattr"] == ["+avx2", "-avx512f"]


def test_check_memory_says_how_much_and_why(monkeypatch):
    from deploytool import tensors

    monkeypatch.setattr(tensors, "physical_memory", lambda: 8 << 30)
    check_memory([TensorSpec("x", (1, 1024, 1024))])  # 4 MiB of float32
    with pytest.raises(DeploytoolError, match=r"x:1x3x4096x4096:float32 holds 50,331,648 "
                                              r"elements \(0.188 GiB\)"):
        check_memory([TensorSpec("x", (1, 3, 4096, 4096))] * 8)
    with pytest.raises(DeploytoolError, match="more than half of this machine's 8 GiB"):
        check_memory([TensorSpec("x", ("N", 1 << 20), bounds=(("N", 1 << 12),))])


# ------------------------------------------------------------------ output paths

def _package_marker(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text("{}")


def test_output_paths_that_cannot_be_written(mlp_pt, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    holder = tmp_path / "holder"
    _package_marker(holder)
    model_inside = holder / "model.pt"
    model_inside.write_bytes(mlp_pt.read_bytes())
    cases = [
        (["-o", a_file / "sub"], f"{a_file} is a file, not a folder"),
        (["-o", a_file], "already exists and is a file (not a folder)"),
        (["-o", a_file, "--force"], "--force replaces only a package"),
        (["-o", folder], "already exists and is a folder"),
        (["-o", folder, "--force"], "--force replaces only a package"),
        (["-o", tmp_path, "--force"], "--force replaces only a package"),
    ]
    for args, fragment in cases:
        before = tree(tmp_path)
        one_error(invoke("compile", mlp_pt, *args), 1, fragment)
        assert tree(tmp_path) == before, args
    before = tree(tmp_path)
    one_error(invoke("compile", model_inside, "-o", holder, "--force"), 1,
              "--force would delete the model")
    one_error(invoke("compile", mlp_pt, "-o", holder, "--force", "--db", holder / "db"), 1,
              "--force would delete --db")
    assert tree(tmp_path) == before


def test_a_full_disk_is_one_line_and_leaves_nothing(mlp_pt, tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    monkeypatch.setattr(compiler, "build_library", lambda *a, **k: None)
    monkeypatch.setattr(compiler, "build_native", full)
    one_error(invoke("compile", mlp_pt, "-o", tmp_path / "out", "--no-java"), 1,
              "no space left on the device")
    assert [p.name for p in tmp_path.iterdir()] == []


# ------------------------------------------------------------------ leftovers, modes, locks

def test_leftovers_of_killed_compiles_are_removed_and_nothing_else(tmp_path):
    dead = 2 ** 22 + 12345  # above the usual pid_max: no such process
    ours = [f".pkg.tmp-{dead}-0123abcd", f".pkg.old-{dead}-89abcdef",
            f".pkg.tar.gz.tmp-{dead}-00112233"]
    kept = [f".pkg.tmp-{os.getpid()}-0123abcd",  # a live process
            f".pkg.keep-{dead}-0123abcd",  # --keep-temps
            f".pkgx.tmp-{dead}-0123abcd", ".pkg.tmp-x", f".pkg.tmp-{dead}-zzzzzzzz",
            "pkg.tmp-1-0123abcd", ".pkg.lockx"]
    for name in ours + kept:
        (tmp_path / name).mkdir() if "tar.gz" not in name else (tmp_path / name).write_text("")
    (tmp_path / ours[0] / "model.so").write_text("half written")
    removed = remove_leftovers(tmp_path / "pkg")
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


KILLED = """
import os, sys, time
from pathlib import Path
from deploytool.package.manifest import atomic_folder
with atomic_folder(Path(sys.argv[1]), force=False) as scratch:
    (scratch / "model.so").write_text("half")
    print(scratch, flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_compile_leaves_scratch_that_the_next_one_removes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path / "pkg")], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        scratch = Path(proc.stdout.readline().strip())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert scratch.is_dir() and scratch.name.startswith(".pkg.tmp-")
    with atomic_folder(tmp_path / "pkg", force=False) as new:
        (new / "model.so").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_a_package_folder_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "pkg", force=False) as scratch:
            (scratch / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pkg").stat().st_mode) == 0o755


def test_a_second_compile_into_the_same_output_fails_at_once(mlp_pt, tmp_path):
    with atomic_folder(tmp_path / "pkg", force=False) as scratch:
        result = invoke("compile", mlp_pt, "-o", tmp_path / "pkg")
        one_error(result, 1, "is being written by another deploytool", f"pid {os.getpid()}")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([scratch.name, ".pkg.lock"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # the lock file is gone


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    lock = tmp_path / ".pkg.lock"
    lock.write_text("999999999")  # no process holds it
    with exclusive_lock(lock, lambda holder: DeploytoolError(holder)):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


def test_a_second_tune_into_the_same_database_fails_and_loses_nothing(mlp_pt, tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / "database_workload.json").write_text("")
    (db / "database_tuning_record.json").write_text("")
    with lock_database(db):
        before = tree(db)
        result = invoke("tune", mlp_pt, "--db", db, "--trials", "4")
        one_error(result, 1, f"tuning database {db} is in use by another deploytool tune",
                  f"pid {os.getpid()}")
        assert tree(db) == before
    assert not (db / ".deploytool.lock").exists()


# ------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_exits_130_and_leaves_nothing(mlp_pt, tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compiler, "build_library", interrupted)
    result = invoke("compile", mlp_pt, "-o", tmp_path / "out", "--no-java")
    one_error(result, 130, "interrupted (Ctrl-C)")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_that_a_library_turned_into_an_error_still_exits_130(mlp_pt, tmp_path,
                                                                     monkeypatch):
    """TVM turns a Ctrl-C during its build into RuntimeError(''), which build_library reported
    as 'TVM could not build the model for cpu ()'."""
    def tvm_build(*_args, **_kwargs):
        note_interrupt()  # what the CLI's SIGINT handler records
        raise DeploytoolError("TVM could not build the model for cpu (RuntimeError)",
                              "Report it with the model attached")

    monkeypatch.setattr(compiler, "build_library", tvm_build)
    handler = signal.getsignal(signal.SIGINT)
    result = invoke("compile", mlp_pt, "-o", tmp_path / "out", "--no-java")
    line = one_error(result, 130, "interrupted (Ctrl-C)")
    assert "TVM could not build" not in line
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is handler  # handed back
    assert not was_interrupted()  # forgotten, or the next compile in this process would stop


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["import", "build"])
def test_a_real_ctrl_c_during_compile(stage, mlp_pt, tmp_path):
    """SIGINT to a real compile, right after the stage before ``stage`` (TVM's build itself for
    "import": it runs next)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "work"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "deploytool", "compile", str(mlp_pt), "-o",
                             str(out / "pkg"), "--no-java"], env=env, cwd=out,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip().startswith(stage):
                # inside TVM's build after "import"; after "build" the package stage and the
                # validation of an MLP take about 0.15 s, so the signal goes at once
                time.sleep(0.3 if stage == "import" else 0)
                proc.send_signal(signal.SIGINT)
                break
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stdout + stderr
    assert stderr.strip().splitlines() == ["Error: interrupted (Ctrl-C)"], stderr
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------ packages: reading only

@pytest.mark.slow
def test_validate_reads_a_package_and_records_only_when_asked(mlp_package, tmp_path,
                                                              monkeypatch):
    package = copy_package(mlp_package.path, tmp_path / "pkg")
    before = tree(package)

    def refuse(self):
        raise ReadOnlyPackage("read-only", "for this test")

    monkeypatch.setattr(Package, "save_manifest", refuse)
    result = invoke("validate", package, "--samples", "1")
    assert result.exit_code == 0, result.output
    result = invoke("inspect", package)
    assert result.exit_code == 0, result.output
    result = invoke("bench", package, "--min-iters", "2", "--min-seconds", "0", "--rounds", "1",
                    "--warmup-ms", "0")
    assert result.exit_code == 0, result.output
    assert "note: read-only. for this test" in result.output
    assert tree(package) == before
    monkeypatch.undo()
    result = invoke("validate", package, "--samples", "1", "--record")
    assert result.exit_code == 0, result.output
    assert json.loads((package / "manifest.json").read_text())["validation"]["samples"] == 1


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_package_can_be_validated_inspected_and_benchmarked(mlp_package, tmp_path):
    package = copy_package(mlp_package.path, tmp_path / "pkg")
    for path in [package, *package.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)
    try:
        for args in (["validate", package, "--samples", "1"], ["inspect", package],
                     ["bench", package, "--min-iters", "2", "--min-seconds", "0", "--rounds",
                      "1", "--warmup-ms", "0"]):
            result = invoke(*args)
            assert result.exit_code == 0, result.output
    finally:
        for path in [package, *package.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)


@pytest.mark.slow
def test_a_compiled_package_has_the_umask_mode(mlp_package):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(mlp_package.path.stat().st_mode) == 0o777 & ~umask


@pytest.mark.slow
def test_a_real_package_with_a_damaged_manifest_or_library(mlp_package, tmp_path):
    package = copy_package(mlp_package.path, tmp_path / "pkg")
    data = (package / "model.so").read_bytes()
    (package / "model.so").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    one_error(invoke("validate", package), 1, "model.so does not match its sha256")
    for key in ("inputs", "model", "outputs", "runtime"):
        copy = copy_package(mlp_package.path, tmp_path / f"no-{key}")
        _damage(copy, _drop(key))
        one_error(invoke("validate", copy), 1, f"'{key}' is missing")


@pytest.mark.slow
def test_nan_weights_are_named(tmp_path):
    import torch

    from deploytool.testing.examples import save_torchscript

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    path = save_torchscript(model, [TensorSpec("x", (1, 8))], tmp_path / "nan.pt")
    result = invoke("compile", path, "-o", tmp_path / "out", "--no-java")
    line = one_error(result, 1, "itself gives NaN for output 'output'", "torch.isnan")
    assert "differs" not in line and "tolerance" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]
