"""Build the package's Java binding: java/deploytool.jar and lib/libdeploytool_jni.so."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..common import cache_root
from ..errors import DeploytoolError
from ..targets import TargetSpec
from .native import RUNTIME_SRC, compile_cached

JAVA_SRC = RUNTIME_SRC / "java"
JNI_SOURCE = RUNTIME_SRC / "deploytool_jni.cc"
EXAMPLE = RUNTIME_SRC / "examples" / "java" / "Main.java"
RELEASE = 11
JAR = "java/deploytool.jar"
JNI_LIBRARY = "lib/libdeploytool_jni.so"
INSTALL_HINT = "Install a JDK 11 or later (apt-get install default-jdk-headless) or set JAVA_HOME"
# The package README's two commands (run from the package folder); tests run them as written.
README_COMMANDS = ("javac -cp java/deploytool.jar -d build/java examples/java/Main.java",
                   "java -cp java/deploytool.jar:build/java Main .")


@dataclass(frozen=True)
class Jdk:
    """A JDK with javac and the JNI headers."""

    home: Path
    version: str

    @property
    def javac(self) -> Path:
        return self.home / "bin" / "javac"

    @property
    def java(self) -> Path:
        return self.home / "bin" / "java"

    @property
    def include_dirs(self) -> list[Path]:
        return [self.home / "include", self.home / "include" / "linux"]


def find_jdk() -> Jdk:
    """The JDK at ``$JAVA_HOME``, else the one that ``javac`` on ``PATH`` belongs to.

    Returns
    -------
    Jdk

    Raises
    ------
    DeploytoolError
        When neither holds a JDK 11 or later with the JNI headers; the message says what was
        searched.
    """
    searched, candidates = [], []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
        searched.append(f"JAVA_HOME={os.environ['JAVA_HOME']}")
    else:
        searched.append("JAVA_HOME unset")
    javac = shutil.which("javac")
    if javac:
        candidates.append(Path(os.path.realpath(javac)).parent.parent)
        searched.append(f"javac at {javac}")
    else:
        searched.append("no javac on PATH")
    for home in candidates:
        if not (home / "bin" / "javac").is_file() or not (home / "include" / "jni.h").is_file():
            continue
        version = _javac_version(home / "bin" / "javac")
        if version and int(version.split(".")[0]) >= RELEASE:
            return Jdk(home, version)
        searched.append(f"{home} is JDK {version or 'of unknown version'}")
    raise DeploytoolError(f"no JDK {RELEASE}+ with JNI headers found ({'; '.join(searched)})",
                          INSTALL_HINT)


def _javac_version(javac: Path) -> str | None:
    try:
        proc = subprocess.run([str(javac), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"javac (\d+(?:\.\d+)*)", proc.stdout + proc.stderr)
    return match.group(1) if match else None


def java_sources() -> list[Path]:
    """The ai.deploytool sources that go into the jar."""
    return sorted(JAVA_SRC.rglob("*.java"))


def build_jar(jdk: Jdk, output: Path) -> None:
    """Compile the ``ai.deploytool`` classes for Java 11 into a jar, reusing a cached one."""
    digest = hashlib.sha256(f"{jdk.version} --release {RELEASE}".encode())
    for source in java_sources():
        digest.update(str(source.relative_to(JAVA_SRC)).encode() + b"\0" + source.read_bytes())
    cached = cache_root() / "java" / digest.hexdigest()[:24] / output.name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as scratch:
            classes = Path(scratch) / "classes"
            proc = subprocess.run([str(jdk.javac), "--release", str(RELEASE), "-encoding", "UTF-8",
                                   "-d", str(classes), *map(str, java_sources())],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise DeploytoolError(f"javac failed to build {output.name}: "
                                      f"{(proc.stdout + proc.stderr).strip()[-2000:]}",
                                      "Check the JDK installation")
            jar = Path(scratch) / output.name
            _write_jar(classes, jar)
            os.replace(jar, cached)
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(cached, output)


def _write_jar(classes: Path, jar: Path) -> None:
    """A jar is a zip with a manifest first; fixed timestamps keep it reproducible."""
    manifest = ("Manifest-Version: 1.0\r\nCreated-By: deploytool\r\n"
                "Automatic-Module-Name: ai.deploytool\r\n\r\n")
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", (1980, 1, 1, 0, 0, 0)), manifest)
        for path in sorted(classes.rglob("*.class")):
            info = zipfile.ZipInfo(str(path.relative_to(classes)), (1980, 1, 1, 0, 0, 0))
            archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)


def build_jni(target: TargetSpec, jdk: Jdk, package_dir: Path) -> None:
    """Compile ``lib/libdeploytool_jni.so`` with the target's compiler against ``lib/``."""
    lib, include = package_dir / "lib", package_dir / "include"
    compile_cached(target, ["-std=c++17", "-O2", "-fPIC", "-shared", str(JNI_SOURCE),
                            f"-I{include}", *(f"-I{d}" for d in jdk.include_dirs), f"-L{lib}",
                            "-ldl"],  # libdeploytool.so: dlopen'ed by JNI_OnLoad (signals)
                   package_dir / JNI_LIBRARY, [JNI_SOURCE, RUNTIME_SRC / "deploytool.h"])


def build_java(target: TargetSpec, package_dir: Path, enabled: bool | None,
               log: Callable[[str], None]) -> dict:
    """Add the Java binding to a package whose native parts are built.

    Parameters
    ----------
    target : TargetSpec
        The package's target (its ``cxx`` compiles the JNI library).
    package_dir : Path
        The package folder, with ``lib/`` and ``include/`` written.
    enabled : bool or None
        True: build it, failing if there is no JDK. False: leave it out. None: build it when a
        JDK is present, else leave it out and say so.
    log : callable
        Receives one line saying what was done.

    Returns
    -------
    dict
        The manifest's ``java`` entry.
    """
    if enabled is False:
        log(f"  {'java':<10} left out (--no-java)")
        return {"built": False, "reason": "left out with --no-java"}
    try:
        jdk = find_jdk()
    except DeploytoolError as err:
        if enabled:
            raise
        log(f"  {'java':<10} left out: {err}")
        return {"built": False, "reason": str(err)}
    build_jar(jdk, package_dir / JAR)
    build_jni(target, jdk, package_dir)
    examples = package_dir / "examples" / "java"
    examples.mkdir(parents=True, exist_ok=True)
    shutil.copy2(EXAMPLE, examples / EXAMPLE.name)
    log(f"  {'java':<10} {JAR} (Java {RELEASE}+) and {JNI_LIBRARY}, JDK {jdk.version}")
    return {"built": True, "jar": JAR, "jni_library": JNI_LIBRARY, "release": RELEASE,
            "jdk": jdk.version, "example": f"examples/java/{EXAMPLE.name}"}
