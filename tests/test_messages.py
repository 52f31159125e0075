"""Warnings from TVM and torch are collected during a compile: counted in one line, printed with
--verbose, kept in the package's build.log, never left on the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from deploytool.messages import collected, stderr_records

TVM_WARNING = "/project/include/tvm/topi/transform.h:1261: Warning: Fast mode segfaults"


def test_collects_stderr_of_native_code_and_python_warnings(capfd):
    with collected() as messages:
        os.write(2, f"[22:57:23] {TVM_WARNING}\n".encode())
        os.write(2, f"[22:57:24] {TVM_WARNING}\n".encode())
        os.write(2, b"Error converting operator Reshape\n  # Metadata omitted\n")
        warnings.warn("old API", FutureWarning, stacklevel=1)
    assert capfd.readouterr().err == ""  # nothing reached the terminal
    counted = dict(messages.counted())
    assert counted[TVM_WARNING] == 2  # the time prefix does not make repeats distinct
    assert counted["Error converting operator Reshape\n  # Metadata omitted"] == 1
    assert any("FutureWarning: old API" in record for record in counted)
    assert "4 from TVM and torch, 3 distinct" in messages.summary()
    assert any(line.endswith("(x2)") and TVM_WARNING in line for line in messages.lines())


def test_stderr_restored_after_an_error(capfd):
    with pytest.raises(ValueError), collected():
        raise ValueError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_torch_log_prefix_is_dropped():
    line = "W1204 23:03:40.865000 2345 torch/export/__init__.py:348] Ran into an error"
    assert stderr_records(line + "\n" + line.replace("2345", "2346")) == [
        "torch/export/__init__.py:348] Ran into an error"] * 2


EMBEDDING = """
import sys, torch
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(20, 8)
    def forward(self, tokens):
        return self.embedding(tokens).sum(1)
torch.export.save(torch.export.export(Model().eval(), (torch.zeros(1, 5, dtype=torch.long),)),
                  sys.argv[1])
"""


@pytest.mark.slow
def test_compile_counts_warnings_and_keeps_them_in_build_log(tmp_path):
    model = tmp_path / "embedding.pt2"
    subprocess.run([sys.executable, "-c", EMBEDDING, model], check=True, capture_output=True)

    def compile_(*extra):
        return subprocess.run([sys.executable, "-m", "deploytool", "compile", str(model), "-o",
                               str(tmp_path / "pkg"), "--force", "--no-java", *extra],
                              capture_output=True, text=True)

    quiet = compile_()
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert quiet.stderr == ""  # TVM's gather warning and torch's FutureWarning are collected
    summary = [line for line in quiet.stdout.splitlines() if line.startswith("  warnings")]
    assert len(summary) == 1 and "--verbose" in summary[0]
    assert "Fast mode segfaults" not in quiet.stdout
    log = (tmp_path / "pkg" / "build.log").read_text()
    assert "Fast mode segfaults" in log and "validation PASSED" in log

    verbose = compile_("--verbose")
    assert verbose.returncode == 0 and verbose.stderr == ""
    assert "Fast mode segfaults" in verbose.stdout
