"""Tests for deploytool.aarch64_runtime: ELF checks, --runtime-dir layouts, cache, fetch errors."""

from __future__ import annotations

import json
import platform
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from deploytool.common import sha256_of
from deploytool.errors import DeploytoolError
from deploytool.toolchains import tvm_runtime as aarch64_runtime
from deploytool.toolchains.tvm_runtime import (
    cache_dir,
    cached_runtime,
    check_elf_arch,
    elf_arch,
    libraries_in_dir,
)

WHEEL_NAMES = {
    "apache-tvm": "apache_tvm-{v}-py3-none-manylinux_2_28_aarch64.whl",
    "apache-tvm-ffi": "apache_tvm_ffi-{v}-cp311-cp311-manylinux_2_28_aarch64.whl",
}


def fake_elf(path: Path, machine: int) -> Path:
    """A file with a 64-bit little-endian ELF header for ``machine`` (62 x86-64, 183 AArch64)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[18:20] = machine.to_bytes(2, "little")
    path.write_bytes(bytes(header) + path.name.encode())
    return path


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPLOYTOOL_CACHE", str(cache))
    return cache


def test_elf_arch_reads_the_machine_field(tmp_path):
    assert elf_arch(fake_elf(tmp_path / "a.so", 183)) == "aarch64"
    assert elf_arch(fake_elf(tmp_path / "b.so", 62)) == "x86_64"
    assert elf_arch(fake_elf(tmp_path / "c.so", 243)) == "e_machine=243"  # RISC-V
    (tmp_path / "text").write_text("not a binary at all")
    assert elf_arch(tmp_path / "text") is None
    (tmp_path / "short").write_bytes(b"\x7fELF")
    assert elf_arch(tmp_path / "short") is None


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks the installed x86_64 wheel")
def test_elf_arch_of_the_installed_runtime():
    import tvm

    assert elf_arch(Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so") == "x86_64"


def test_check_elf_arch_names_both_architectures(tmp_path):
    library = fake_elf(tmp_path / "libtvm_runtime.so", 62)
    with pytest.raises(DeploytoolError, match="is x86_64 but the target needs aarch64"):
        check_elf_arch(library, "aarch64")
    check_elf_arch(library, "x86_64")


def test_runtime_dir_with_the_two_libraries(tmp_path):
    runtime = fake_elf(tmp_path / "libtvm_runtime.so", 183)
    ffi = fake_elf(tmp_path / "libtvm_ffi.so", 183)
    assert libraries_in_dir(tmp_path, "aarch64") == [runtime, ffi]


def test_runtime_dir_with_a_site_packages_layout(tmp_path):
    runtime = fake_elf(tmp_path / "tvm" / "lib" / "libtvm_runtime.so", 183)
    ffi = fake_elf(tmp_path / "tvm_ffi" / "lib" / "libtvm_ffi.so", 183)
    assert libraries_in_dir(tmp_path, "aarch64") == [runtime, ffi]


def test_runtime_dir_with_the_wheels(tmp_path, empty_cache):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    sources = tmp_path / "src"
    contents = {}
    for name, (dist, member) in aarch64_runtime.WHEEL_MEMBERS.items():
        library = fake_elf(sources / name, 183)
        contents[name] = library.read_bytes()
        with zipfile.ZipFile(wheels / WHEEL_NAMES[dist].format(v="1.0"), "w") as archive:
            archive.write(library, member)
    found = libraries_in_dir(wheels, "aarch64")
    assert [p.name for p in found] == ["libtvm_runtime.so", "libtvm_ffi.so"]
    assert all(empty_cache in p.parents for p in found)
    assert [p.read_bytes() for p in found] == [contents[p.name] for p in found]


def test_runtime_dir_missing_library(tmp_path):
    fake_elf(tmp_path / "libtvm_runtime.so", 183)
    with pytest.raises(DeploytoolError, match="has no libtvm_ffi.so"):
        libraries_in_dir(tmp_path, "aarch64")
    with pytest.raises(DeploytoolError, match="does not exist"):
        libraries_in_dir(tmp_path / "nowhere", "aarch64")


def test_runtime_dir_of_the_wrong_architecture(tmp_path):
    fake_elf(tmp_path / "libtvm_runtime.so", 62)
    fake_elf(tmp_path / "libtvm_ffi.so", 62)
    with pytest.raises(DeploytoolError, match="libtvm_runtime.so is x86_64 but the target needs"):
        libraries_in_dir(tmp_path, "aarch64")


def test_cache_is_versioned_and_under_deploytool_cache(empty_cache):
    from importlib.metadata import version

    folder = cache_dir("aarch64")
    assert folder.parent == empty_cache / "runtime" / "aarch64"
    assert version("apache-tvm") in folder.name and version("apache-tvm-ffi") in folder.name


def test_no_network_and_no_cache_says_how_to_provide_the_runtime(empty_cache, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, as with no network
    with pytest.raises(DeploytoolError) as caught:
        cached_runtime("aarch64")
    message = str(caught.value)
    assert message.startswith("could not download the aarch64 TVM runtime wheels")
    assert "--runtime-dir" in message and "--platform manylinux_2_28_aarch64" in message
    assert not cache_dir("aarch64").exists()  # no half-written cache entry
    leftovers = list((empty_cache / "runtime" / "aarch64").iterdir())
    assert leftovers == []


def test_a_damaged_cache_entry_is_refused(empty_cache):
    folder = cache_dir("aarch64")
    for name in aarch64_runtime.LIBRARIES:
        fake_elf(folder / name, 183)
    record = {"sha256": {name: "0" * 64 for name in aarch64_runtime.LIBRARIES}}
    (folder / aarch64_runtime.SOURCES).write_text(json.dumps(record))
    with pytest.raises(DeploytoolError, match="is damaged .*Delete"):
        cached_runtime("aarch64")


def test_a_good_cache_entry_is_used_without_fetching(empty_cache, monkeypatch):
    folder = cache_dir("aarch64")
    libraries = [fake_elf(folder / name, 183) for name in aarch64_runtime.LIBRARIES]
    record = {"sha256": {p.name: sha256_of(p) for p in libraries}}
    (folder / aarch64_runtime.SOURCES).write_text(json.dumps(record))
    monkeypatch.setattr(aarch64_runtime, "_fetch", lambda *a: pytest.fail("fetched again"))
    assert cached_runtime("aarch64") == libraries


def test_no_fetch_for_other_architectures(empty_cache):
    with pytest.raises(DeploytoolError, match="fetch a TVM runtime for riscv64.*runtime-dir"):
        cached_runtime("riscv64")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)")
def test_compile_without_network_fails_before_any_work(tmp_path, empty_cache, monkeypatch):
    from click.testing import CliRunner

    from deploytool.cli import main
    from deploytool.testing.examples import mlp, save_torchscript

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    model = save_torchscript(*mlp(), tmp_path / "mlp.pt")
    result = CliRunner().invoke(main, ["compile", str(model), "--target", "arm64",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "Error: could not download the aarch64 TVM runtime wheels" in result.output
    assert "pass --runtime-dir DIR" in result.output
    assert not re.search(r"^\s+load\s+[0-9.]+ s$", result.output, re.M)  # no stage ran
    assert not (tmp_path / "out").exists()
