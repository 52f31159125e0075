"""deploytool.java: the Java binding built into packages, run with the JDK and no Python."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.frontends.load import load_model
from deploytool.frontends.torchscript import run_torchscript
from deploytool.targets import load_target
from deploytool.tensors import sample_inputs
from deploytool.testing.examples import write_example
from deploytool.toolchains.java import build_java, find_jdk
from deploytool.toolchains.tvm_runtime import elf_arch

HARNESS = Path(__file__).parent / "java" / "ApiCheck.java"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def jdk():
    try:
        return find_jdk()
    except DeploytoolError as err:
        pytest.skip(f"needs a JDK 11+: {err}")


@pytest.fixture(scope="module")
def packages(jdk, compile_package):
    """The MLP and the CNN compiled with the Java binding: {name: (package dir, model file)}."""
    return {name: (compile_package(name, java=True).path, compile_package.model_path(name))
            for name in ("mlp", "cnn")}


def java_run(jdk, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a JDK tool under a clean environment whose PATH holds only the JDK."""
    return subprocess.run(["env", "-i", f"PATH={jdk.home / 'bin'}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def readme_commands(package_dir: Path) -> list[list[str]]:
    """The javac and java commands of the package README, as written there."""
    lines = [line.split("#")[0].strip() for line in (package_dir / "README.md").read_text()
             .splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(("javac ", "java "))]


def build_example(jdk, package_dir: Path) -> list[str]:
    """Compile examples/java/Main.java with the README's javac line; return its java line."""
    javac, java = readme_commands(package_dir)
    assert javac[0] == "javac" and java[0] == "java"
    proc = java_run(jdk, javac, package_dir)
    assert proc.returncode == 0, proc.stderr
    return java


def parse_outputs(stdout: str) -> dict[str, np.ndarray]:
    outputs = {}
    for line in stdout.strip().splitlines():
        name, values = line.split(":", 1)
        outputs[name] = np.array(values.split(), dtype=np.float32)
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_example_matches_torchscript(jdk, packages, name):
    package_dir, model_file = packages[name]
    java = build_example(jdk, package_dir)
    source = load_model(model_file)
    inputs = sample_inputs(source.inputs, seed=7)
    files = []
    for spec, array in zip(source.inputs, inputs, strict=True):
        np.save(package_dir / f"{spec.name}.npy", array)
        files.append(f"{spec.name}.npy")
    proc = java_run(jdk, [*java, *files], package_dir)
    assert proc.returncode == 0, proc.stderr
    got = parse_outputs(proc.stdout)
    reference = run_torchscript(source.module, inputs)
    manifest = json.loads((package_dir / "manifest.json").read_text())
    assert list(got) == [d["name"] for d in manifest["outputs"]]
    for values, expected in zip(got.values(), reference, strict=True):
        assert values.shape == expected.ravel().shape
        np.testing.assert_allclose(values, expected.ravel(), rtol=0, atol=TOLERANCE)


@pytest.mark.slow
def test_package_layout_and_manifest(jdk, packages):
    package_dir, _ = packages["mlp"]
    manifest = json.loads((package_dir / "manifest.json").read_text())
    assert manifest["java"]["built"] is True
    assert manifest["java"]["jdk"] == jdk.version
    for relative in ("java/deploytool.jar", "lib/libdeploytool_jni.so",
                     "examples/java/Main.java"):
        assert (package_dir / relative).is_file(), relative
    with zipfile.ZipFile(package_dir / "java" / "deploytool.jar") as jar:
        classes = [n for n in jar.namelist() if n.endswith(".class")]
        assert "ai/deploytool/Model.class" in classes
        # class file major version 55 is Java 11: the jar runs on Java 11 or later
        assert {int.from_bytes(jar.read(n)[6:8], "big") for n in classes} == {55}


@pytest.mark.slow
def test_readme_snippet_compiles_and_runs(jdk, packages, tmp_path):
    package_dir, _ = packages["cnn"]
    readme = (package_dir / "README.md").read_text()
    snippet = re.search(r"```java\n(.*?)```", readme, re.S).group(1)
    source = tmp_path / "Snippet.java"
    source.write_text(
        "import ai.deploytool.*;\nimport java.nio.file.Paths;\nimport java.util.*;\n"
        "public class Snippet {\n  public static void main(String[] args) {\n"
        + snippet.replace('"path/to/package"', "args[0]")
        + '    System.out.println("snippet ran");\n  }\n}\n')
    jar = str(package_dir / "java" / "deploytool.jar")
    proc = java_run(jdk, ["javac", "-cp", jar, "-d", str(tmp_path), str(source)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = java_run(jdk, ["java", "-cp", f"{jar}:{tmp_path}", "Snippet", str(package_dir)],
                    tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "snippet ran\n"), proc.stderr


def c_api_message(package_dir: Path, runner: Path) -> str:
    """The C API's message for loading ``package_dir``, as the C++ runner prints it."""
    proc = subprocess.run(["env", "-i", str(runner), str(package_dir)], capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ")
    return proc.stderr[len("Error: "):].strip()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "manifest", "truncated", "not-elf"])
def test_bad_package_raises_the_c_api_message(jdk, packages, tmp_path, damage):
    good, _ = packages["mlp"]
    java = build_example(jdk, good)
    bad = tmp_path / "bad"
    if damage != "missing":
        shutil.copytree(good, bad)
        model_so = (good / "model.so").read_bytes()
        if damage == "manifest":
            (bad / "manifest.json").write_text('{"format_version": 1, "inputs": [')
        elif damage == "truncated":
            (bad / "model.so").write_bytes(model_so[:4096])
        else:  # the right size and sha256 (re-signed), but not a shared library
            import hashlib
            import json

            (bad / "model.so").write_bytes(b"x" * len(model_so))
            manifest = json.loads((bad / "manifest.json").read_text())
            manifest["files"]["model.so"] = hashlib.sha256(b"x" * len(model_so)).hexdigest()
            (bad / "manifest.json").write_text(json.dumps(manifest))
    expected = c_api_message(bad, good / "bin" / "deploytool-run")
    wanted = {"missing": "package folder not found", "manifest": "corrupted package",
              "truncated": "corrupted package", "not-elf": "cannot load"}[damage]
    assert expected.startswith(wanted)
    # the example, run from the good package, is pointed at the bad one
    java_line = [arg if arg != "." else str(bad) for arg in java]
    proc = java_run(jdk, java_line, good)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: ai.deploytool.DeploytoolException: {expected}"


NPE_PROGRAM = """
import ai.deploytool.Model;
import java.nio.file.Paths;
public class Npe {
  static String nothing() { return System.getProperty("no.such.property"); }
  public static void main(String[] args) {
    try (Model model = Model.load(Paths.get(args[0]))) {
      for (int i = 0; i < 3; ++i) {
        try {
          System.out.println(nothing().length());
        } catch (NullPointerException expected) {
          System.out.println("caught NPE " + i);
        }
      }
    }
    System.out.println("JVM alive");
  }
}
"""


@pytest.mark.slow
def test_a_null_pointer_exception_after_load_is_caught_not_a_crash(jdk, packages, tmp_path):
    """libtvm_ffi installs a SIGSEGV handler when it loads; the JVM's own must survive it, or
    the JVM's implicit null checks (SIGSEGV, then an NPE) kill the process."""
    package_dir, _ = packages["mlp"]
    (tmp_path / "Npe.java").write_text(NPE_PROGRAM)
    jar = str(package_dir / "java" / "deploytool.jar")
    proc = java_run(jdk, ["javac", "-cp", jar, "-d", str(tmp_path), str(tmp_path / "Npe.java")],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = java_run(jdk, ["java", "-Xcomp", "-cp", f"{jar}:{tmp_path}", "Npe", str(package_dir)],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "caught NPE 0\ncaught NPE 1\ncaught NPE 2\nJVM alive\n"


@pytest.fixture(scope="module")
def harness(jdk, packages, tmp_path_factory):
    """tests/java/ApiCheck.java compiled against the MLP package's jar: the java command."""
    package_dir, _ = packages["mlp"]
    classes = tmp_path_factory.mktemp("harness")
    jar = str(package_dir / "java" / "deploytool.jar")
    proc = java_run(jdk, ["javac", "--release", "11", "-cp", jar, "-d", str(classes),
                          str(HARNESS)], classes)
    assert proc.returncode == 0, proc.stderr
    return ["java", "-cp", f"{jar}:{classes}", "ApiCheck"]


@pytest.mark.slow
def test_threads_share_one_model(jdk, packages, harness, tmp_path):
    package_dir, model_file = packages["mlp"]
    source = load_model(model_file)
    threads, runs_each = 8, 40
    for t in range(threads):
        inputs = sample_inputs(source.inputs, seed=100 + t)
        for i, array in enumerate(inputs):
            array.astype("<f4").tofile(tmp_path / f"in{t}_{i}.bin")
        for i, array in enumerate(run_torchscript(source.module, inputs)):
            array.astype("<f4").tofile(tmp_path / f"out{t}_{i}.bin")
    proc = java_run(jdk, [*harness, "threads", str(package_dir), str(tmp_path), str(threads),
                          str(runs_each), str(TOLERANCE)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = dict(item.split("=") for item in proc.stdout.split())
    assert summary["runs"] == str(threads * runs_each)
    assert summary["checked"] == str(threads * runs_each)  # the MLP has one output
    assert (summary["mismatches"], summary["varied"], summary["failures"]) == ("0", "0", "0")
    assert float(summary["max_abs_err"]) <= TOLERANCE


@pytest.mark.slow
def test_api_conversions_errors_and_close(jdk, packages, harness):
    package_dir, _ = packages["mlp"]
    proc = java_run(jdk, [*harness, "api", str(package_dir)], package_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "inputs [x: float32 [1, 512]]"
    assert lines[1] == "outputs [output: float32 [1, 2]]"
    assert not [line for line in lines if line.startswith("FAIL")]
    assert sum(line.startswith("ok ") for line in lines) == 13
    assert lines[-1] == "all passed"


@pytest.mark.slow
@pytest.mark.cross
def test_arm_package_gets_an_aarch64_jni_library(jdk, packages, compile_package):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)")
    try:
        package = compile_package("mlp", target="arm64", validate=False, java=True)
    except DeploytoolError as err:
        if "could not download" in str(err):
            pytest.skip(f"the aarch64 TVM runtime is not cached and cannot be fetched: {err}")
        raise
    assert elf_arch(package.path / "lib" / "libdeploytool_jni.so") == "aarch64"
    x86_jar = (packages["mlp"][0] / "java" / "deploytool.jar").read_bytes()
    assert (package.path / "java" / "deploytool.jar").read_bytes() == x86_jar


@pytest.fixture
def no_jdk(monkeypatch, tmp_path):
    """An environment with no JDK: JAVA_HOME points at an empty folder, PATH has no javac."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("JAVA_HOME", str(empty))
    monkeypatch.setenv("PATH", str(empty))
    return empty


def test_find_jdk_says_what_it_searched(no_jdk):
    with pytest.raises(DeploytoolError) as err:
        find_jdk()
    assert f"JAVA_HOME={no_jdk}" in str(err.value) and "no javac on PATH" in str(err.value)
    assert "apt-get install default-jdk-headless" in str(err.value)


def test_build_java_without_jdk(no_jdk, tmp_path):
    target, lines = load_target("cpu"), []
    entry = build_java(target, tmp_path, None, lines.append)
    assert entry["built"] is False and "no JDK" in entry["reason"]
    assert len(lines) == 1 and "left out: no JDK" in lines[0]
    assert build_java(target, tmp_path, False, lines.append) == {
        "built": False, "reason": "left out with --no-java"}
    with pytest.raises(DeploytoolError, match="no JDK"):
        build_java(target, tmp_path, True, lines.append)
    assert not (tmp_path / "java").exists()


def test_cli_java_without_jdk_fails_before_writing(no_jdk, tmp_path):
    (no_jdk / "g++").symlink_to(shutil.which("g++", path="/usr/bin:/bin"))  # compile checks it
    model = write_example("mlp", tmp_path / "mlp.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(model), "--java", "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("Error: no JDK 11+ with JNI headers found")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.slow
def test_cli_no_java_leaves_it_out(tmp_path):
    model = write_example("mlp", tmp_path / "mlp.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(model), "--no-java", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "java       left out (--no-java)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["java"] == {"built": False, "reason": "left out with --no-java"}
    assert manifest["compile_options"]["java"] is False
    assert not (out / "java").exists() and not (out / "lib" / "libdeploytool_jni.so").exists()
    assert "Use it from Java" not in (out / "README.md").read_text()
