"""bin/deploytool-run: numbers parsed strictly, every write checked, memory bounded by the inputs'
files and not by --repeat, errors in one line as `Error: <what>. <how to fix>`."""

import os
import struct

import numpy as np
import pytest
from conftest import run_clean

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("args, message", [
    (["--repeat", "abc"], "--repeat needs a whole number from 1 to 1000000000, got 'abc'"),
    (["--repeat", "-1"], "--repeat needs a whole number from 1 to 1000000000, got '-1'"),
    (["--repeat", "1e3"], "--repeat needs a whole number from 1 to 1000000000, got '1e3'"),
    (["--repeat", "99999999999999999999"], "--repeat needs a whole number from 1 to 1000000000"),
    (["--seed", "abc"], "--seed needs a whole number from 0 to 18446744073709551615, got 'abc'"),
    (["--seed", "-3"], "--seed needs a whole number"),
    (["--seed", "99999999999999999999999"], "--seed needs a whole number"),
    (["--threads", "0"], "--threads needs a whole number from 1 to 4096, got '0'"),
    (["--threads", "100000"], "--threads needs a whole number from 1 to 4096, got '100000'"),
    (["--min-iters", "0"], "--min-iters needs a whole number from 1 to 10000000"),
    (["--min-seconds", "nan"], "--min-seconds needs a number from 0 to 86400"),
])
def test_numbers_are_parsed_strictly_in_one_line(mlp_package, args, message):
    proc = run_clean([mlp_package.runner, *args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], proc.stderr


def test_repeat_streams_its_latencies(mlp_package):
    proc = run_clean([mlp_package.runner, "--repeat", "200000"])
    assert proc.returncode == 0, proc.stderr
    assert "runs: 200000, mean" in proc.stdout


def test_a_full_disk_or_an_unwritable_folder_is_an_error_naming_the_path(mlp_package, tmp_path):
    proc = run_clean([mlp_package.runner, "--min-iters", "1", "--min-seconds", "0",
                      "--warmup-ms", "0", "--json", "/dev/full"])
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot write /dev/full: No space left"), proc.stderr
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")
    out = tmp_path / "out"
    out.mkdir()
    (out / "output.npy").symlink_to("/dev/full")
    proc = run_clean([mlp_package.runner, "--output-dir", out])
    assert proc.returncode == 1
    assert "Error: cannot write" in proc.stderr and "No space left on device" in proc.stderr
    proc = run_clean([mlp_package.runner, "--output-dir", "/proc/deploytool-test"])
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: cannot create the folder /proc/deploytool-test: ")
    assert "Choose a writable --output-dir" in proc.stderr


def test_a_npy_header_declaring_a_huge_shape_is_refused_before_allocating(mlp_package, tmp_path):
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 512), }"
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    path = tmp_path / "huge.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64)
    proc = run_clean([mlp_package.runner, "--input", f"x={path}"])
    assert proc.returncode == 1
    assert "declares shape (100000000000, 512), more data than its 64 bytes" in proc.stderr
    assert "bad_alloc" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    np.save(tmp_path / "ok.npy", np.zeros((1, 512), np.float32))
    assert run_clean([mlp_package.runner, "--input", f"x={tmp_path / 'ok.npy'}"]).returncode == 0
