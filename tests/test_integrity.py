"""A tampered package never runs by default: dt_load checks model.so's sha256 against manifest.json
before dlopen, the self-test checks the test vectors, and "files" itself is checked as data."""

import json
import re
import subprocess
import time

import pytest
from conftest import copy_package, run_clean

pytestmark = pytest.mark.slow


def edit_manifest(package_dir, change):
    path = package_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def section_offsets(path):
    """File offsets inside model.so's code (.text) and its largest data section (the weights)."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    sections = {}
    row = r"\]\s+(\S+)\s+(PROGBITS|NOBITS)\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)"
    for match in re.finditer(row, out):
        if match[2] == "PROGBITS":
            sections[match[1]] = (int(match[3], 16), int(match[4], 16))
    text = sections[".text"]
    data = max((s for n, s in sections.items() if n != ".text"), key=lambda s: s[1])
    return {"elf header": 40, "code": text[0] + text[1] // 2, "weights": data[0] + data[1] // 2,
            "last byte": path.stat().st_size - 1}


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_model_so_is_refused_before_it_runs(mlp_package, tmp_path):
    from deploytool.runtime import binding

    offsets = section_offsets(mlp_package.path / "model.so")
    for where, offset in offsets.items():
        pkg = copy_package(mlp_package.path, tmp_path / where.replace(" ", "-"))
        flip(pkg / "model.so", offset)
        proc = run_clean([pkg / "bin" / "deploytool-run"])
        assert proc.returncode == 1, where
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (where, proc.stderr)
        assert "model.so does not match its sha256 in manifest.json" in lines[0], lines[0]
        with pytest.raises(binding.PackageError, match="model.so does not match") as info:
            binding.load(pkg)
        assert info.value.code == 2  # DT_ERR_PACKAGE


def test_skip_verify_is_an_explicit_opt_out(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    offsets = section_offsets(pkg / "model.so")
    flip(pkg / "model.so", offsets["weights"])  # still loads, just gives other numbers
    assert run_clean([pkg / "bin" / "deploytool-run"]).returncode == 1
    proc = run_clean(["DEPLOYTOOL_SKIP_VERIFY=1", pkg / "bin" / "deploytool-run"])
    assert proc.returncode == 0, proc.stderr
    proc = run_clean(["DEPLOYTOOL_SKIP_VERIFY=1", pkg / "bin" / "deploytool-run", "--verify"])
    assert proc.returncode == 1  # an explicit --verify still checks every file


def test_tampered_test_vectors_are_refused_by_the_self_test(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    flip(pkg / "testdata" / "output0.npy", (pkg / "testdata" / "output0.npy").stat().st_size - 1)
    proc = run_clean([pkg / "bin" / "deploytool-run", "--self-test"])
    assert proc.returncode == 1
    assert "testdata/output0.npy does not match its sha256" in proc.stderr, proc.stderr


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(files={}), 'manifest.json "files" does not list model.so'),
    (lambda m: m.pop("files"), 'manifest.json has no "files"'),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}),
     "'../../etc/passwd', a path leaving"),
    (lambda m: m["files"].update({"/etc/passwd": "0" * 64}), "'/etc/passwd', an absolute path"),
    (lambda m: m["files"].update({"model.so": "not-a-digest"}), "no sha256 (64 lowercase hex"),
])
def test_files_in_the_manifest_are_checked_as_data(mlp_package, tmp_path, change, message):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    edit_manifest(pkg, change)
    for args in ([], ["--verify"]):
        proc = run_clean([pkg / "bin" / "deploytool-run", *args])
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)


def test_listed_files_must_be_regular(mlp_package, tmp_path):
    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    (pkg / "zero").symlink_to("/dev/zero")
    edit_manifest(pkg, lambda m: m["files"].update({"zero": "0" * 64}))
    proc = run_clean([pkg / "bin" / "deploytool-run", "--verify"])
    assert proc.returncode == 1 and "zero is not a regular file" in proc.stderr, proc.stderr


def test_the_check_is_cached_in_process_by_file_identity(mlp_package, tmp_path):
    """A second load of an unchanged model.so is not hashed again; a rewritten one is."""
    from deploytool.runtime import binding

    pkg = copy_package(mlp_package.path, tmp_path / "pkg")
    binding.load(pkg)
    binding.load(pkg)
    data = bytearray((pkg / "model.so").read_bytes())
    data[section_offsets(pkg / "model.so")["weights"]] ^= 1
    time.sleep(0.01)
    (pkg / "model.so").write_bytes(bytes(data))  # same inode and size, new content
    with pytest.raises(binding.PackageError, match="model.so does not match"):
        binding.load(pkg)
