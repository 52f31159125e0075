"""Several packages in one process, a thread each, all at once (C, Java, bench --together):
every run's outputs against the packages' own test vectors, and dt_load_ex's options."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import build_c_program, run_clean

from deploytool.cli import main
from deploytool.runtime import binding
from deploytool.runtime.binding import PackageError
from deploytool.toolchains.java import find_jdk

pytestmark = pytest.mark.slow
C_DIR = Path(__file__).parent / "c"
JAVA_CHECK = Path(__file__).parent / "java" / "TogetherCheck.java"


@pytest.fixture(scope="module")
def four_packages(compile_package):
    """Four packages: the MLP and the CNN, each compiled twice (with and without Java)."""
    return [compile_package(name, **options).path
            for options in ({"java": True}, {}) for name in ("mlp", "cnn")]


@pytest.fixture(scope="module")
def together_check(four_packages, tmp_path_factory):
    return build_c_program(C_DIR / "together_check.c", four_packages[0],
                           tmp_path_factory.mktemp("together"))


@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("threads", [0, 1])
def test_c_packages_at_once_match_their_test_vectors(four_packages, together_check, count,
                                                     threads):
    runs = 30
    packages = four_packages[:count]
    proc = run_clean([together_check, threads, runs, *packages])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{p} {runs}/{runs}" for p in packages]


def test_dt_load_ex_refuses_bad_options(four_packages, tmp_path):
    check = build_c_program(C_DIR / "options_check.c", four_packages[0], tmp_path)
    proc = run_clean([check, four_packages[0]])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("1 dt_load_ex: dt_options.size is 0, not sizeof(dt_options)")
    assert lines[1] == "1 dt_load_ex: threads is -1. Pass 0 (all the cores) or a count of threads"
    assert lines[2].startswith("1 dt_load_ex: unknown share policy 7")
    assert lines[3:] == ["0 ok", "0 ok"]


def test_binding_threads_option(four_packages):
    with pytest.raises(PackageError, match="threads is -1"):
        binding.load(four_packages[0], threads=-1)
    with binding.load(four_packages[1], threads=1) as model:
        assert model.self_test()[0]


def write_vectors(package: Path, index: int, folder: Path) -> float:
    """The package's test input and output 0 as in{index}.bin and out{index}.bin; its tolerance."""
    test = json.loads((package / "manifest.json").read_text())["self_test"]
    np.load(package / test["inputs"][0]["file"]).astype("<f4").tofile(folder / f"in{index}.bin")
    np.load(package / test["outputs"][0]["file"]).astype("<f4").tofile(folder / f"out{index}.bin")
    return max(test["atol"], test["rtol"])


@pytest.mark.parametrize("count", [2, 4])
def test_java_packages_at_once_match_their_test_vectors(four_packages, tmp_path, count):
    jdk = find_jdk()
    java_package = four_packages[0]  # compiled with Java: its jar loads every package
    tolerance = max(write_vectors(p, i, tmp_path) for i, p in enumerate(four_packages[:count]))
    jar = str(java_package / "java" / "deploytool.jar")
    env = ["env", "-i", f"PATH={jdk.home / 'bin'}"]
    build = subprocess.run([*env, "javac", "-cp", jar, "-d", str(tmp_path), str(JAVA_CHECK)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    runs = 20
    proc = subprocess.run([*env, "java", "-cp", f"{jar}:{tmp_path}", "TogetherCheck", "0",
                           str(runs), str(tolerance), str(tmp_path),
                           *map(str, four_packages[:count])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{p} {runs}/{runs}" for p in four_packages[:count]]


def test_bench_together_reports_each_model_beside_onnxruntime(four_packages, tmp_path):
    from click.testing import CliRunner

    out = tmp_path / "together.json"
    result = CliRunner().invoke(main, ["bench", *map(str, four_packages[:2]), "--together",
                                       "--compare", "onnxruntime", "--min-seconds", "0.5",
                                       "--warmup-ms", "50", "--json", str(out)])
    assert result.exit_code == 0, result.output
    reports = json.loads(out.read_text())
    assert [r["backend"] for r in reports] == ["package", "onnxruntime"]
    for report in reports:
        assert [m["model"] for m in report["models"]] == [p.name for p in four_packages[:2]]
        for model in report["models"]:
            assert model["outputs_match"], model
            assert model["alone"]["runs"] >= 3 and model["together"]["runs"] >= 3  # none starved
    assert result.output.count("| match |") == 4


def test_bench_several_packages_need_together(four_packages):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["bench", *map(str, four_packages[:2])])
    assert result.exit_code == 2
    assert "2 packages given without --together" in result.output
