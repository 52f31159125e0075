"""Every command README.md shows runs as written, so the README cannot rot."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def shell_commands() -> list[str]:
    """The command lines of README.md's ```sh blocks, comments dropped, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_is_short_and_for_users():
    text = README.read_text()
    assert len(text.encode()) <= 10 * 1024
    assert not re.search(r"\bstop \d+|\bsession\b|\bI\b", text)


def test_readme_make_commands_are_makefile_targets():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    makes = [c.split()[1] for c in shell_commands() if c.startswith("make ")]
    assert makes and set(makes) <= targets
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI runs make test itself


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    """The deploytool and package commands, in order, from a fresh folder (the make commands:
    make test is what CI runs, make demo and make test-fast are checked as targets above)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = []
    for command in shell_commands():
        if command.startswith(("make ", "source ")):
            continue
        proc = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        ran.append(command)
    assert any(c.startswith("deploytool compile") for c in ran)
    assert (tmp_path / "artifacts" / "cnn-ir" / "relax-imported.py").is_file()
