"""TVM runtime libraries for other architectures: aarch64 wheels fetched once, cached, checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from ..common import Log, cache_root, sha256_of
from ..errors import DeploytoolError

# e_machine values of the ELF header (elf.h) for the architectures deploytool builds for.
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")
# library -> (distribution, its path inside the wheel)
WHEEL_MEMBERS = {"libtvm_runtime.so": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
                 "libtvm_ffi.so": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so")}
# pip platform tags to accept, best first (pip takes them all in one call).
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_24_aarch64",
             "manylinux2014_aarch64", "manylinux_2_17_aarch64", "linux_aarch64")
PYTHON_VERSION = "3.11"  # the libraries do not depend on Python; any wheel of the version will do
SOURCES = "SOURCES.json"



def elf_arch(path: Path) -> str | None:
    """The architecture an ELF file was built for (``"x86_64"``, ``"aarch64"``), None if not ELF.

    Parameters
    ----------
    path : Path
        A shared library, executable or object file.

    Returns
    -------
    str or None
        The architecture name, ``"e_machine=N"`` for one deploytool does not know, or None when
        the file is not a 64-bit little-endian ELF file.
    """
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        return None
    machine = int.from_bytes(header[18:20], "little")
    return ELF_MACHINES.get(machine, f"e_machine={machine}")


def check_elf_arch(path: Path, arch: str) -> None:
    """Raise DeploytoolError unless ``path`` is an ELF file built for ``arch``."""
    found = elf_arch(path)
    if found != arch:
        raise DeploytoolError(f"{path} is {'not an ELF file' if found is None else found} "
                              f"but the target needs {arch}",
                              f"Give the {arch} build of {path.name}")


def tvm_versions() -> dict[str, str]:
    """The installed apache-tvm and apache-tvm-ffi versions: the runtime must match the compiler."""
    return {dist: metadata.version(dist) for dist, _ in WHEEL_MEMBERS.values()}


def cache_dir(arch: str = "aarch64") -> Path:
    """Where the runtime for ``arch`` and the installed TVM versions is cached."""
    versions = tvm_versions()
    return (cache_root() / "runtime" / arch /
            f"tvm-{versions['apache-tvm']}_ffi-{versions['apache-tvm-ffi']}")


def libraries_in_dir(directory: Path, arch: str) -> list[Path]:
    """``libtvm_runtime.so`` and ``libtvm_ffi.so`` for ``arch`` from a folder the user gives.

    The folder may hold the two libraries, a site-packages layout (``tvm/lib``, ``tvm_ffi/lib``,
    e.g. copied from the board) or the two wheels; wheels are unpacked into the cache.

    Parameters
    ----------
    directory : Path
        The ``--runtime-dir`` folder.
    arch : str
        The target architecture; each library's ELF header must match it.

    Returns
    -------
    list of Path
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DeploytoolError(f"runtime folder {directory} does not exist",
                              "Pass --runtime-dir a folder holding libtvm_runtime.so and "
                              "libtvm_ffi.so")
    wheels = {dist: sorted(directory.glob(f"{dist.replace('-', '_')}-*.whl"))
              for dist, _ in WHEEL_MEMBERS.values()}
    found = []
    for name, (dist, member) in WHEEL_MEMBERS.items():
        candidates = [directory / name, directory / member]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None and wheels[dist]:
            path = _unpack_from_wheels(wheels[dist], name, member, arch)
        if path is None:
            raise DeploytoolError(
                f"{directory} has no {name} (looked for {name}, {member} and {dist} wheels)",
                f"Put the {arch} {name} from {dist}=={tvm_versions()[dist]} there")
        check_elf_arch(path, arch)
        found.append(path)
    return found


def _unpack_from_wheels(wheels: list[Path], name: str, member: str, arch: str) -> Path | None:
    for wheel in wheels:
        if f"_{arch}" not in wheel.name:
            continue
        target = cache_root() / "runtime" / arch / "from-wheel" / sha256_of(wheel)[:24] / name
        if not target.is_file():
            _extract(wheel, member, target)
        return target
    return None


def _extract(wheel: Path, member: str, target: Path) -> None:
    """Copy ``member`` out of ``wheel`` to ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            scratch = target.with_name(f".{target.name}.tmp{os.getpid()}")
            with open(scratch, "wb") as out:
                shutil.copyfileobj(source, out)
    except (KeyError, zipfile.BadZipFile) as err:
        raise DeploytoolError(f"{wheel.name} has no {member} ({err})",
                              "Download the wheel again") from err
    os.replace(scratch, target)


def cached_runtime(arch: str = "aarch64", log: Log | None = None) -> list[Path]:
    """The TVM runtime libraries for ``arch``, fetched from PyPI's wheels on first use.

    The wheels are those of the installed apache-tvm and apache-tvm-ffi versions (the pinned
    ones), downloaded with ``pip download``; the libraries are checked (ELF machine) and their
    sha256 recorded in ``SOURCES.json`` beside them, and checked again on every later use.

    Parameters
    ----------
    arch : str
        Only ``"aarch64"`` has wheels to fetch.
    log : callable, optional
        Receives a line when a download starts.

    Returns
    -------
    list of Path
        ``libtvm_runtime.so`` and ``libtvm_ffi.so`` in the cache.
    """
    if arch != "aarch64":
        raise DeploytoolError(f"deploytool cannot fetch a TVM runtime for {arch}",
                              "Pass --runtime-dir with that architecture's libtvm_runtime.so "
                              "and libtvm_ffi.so")
    folder = cache_dir(arch)
    libraries = [folder / name for name in LIBRARIES]
    if not (folder / SOURCES).is_file():
        _fetch(folder, arch, log or (lambda _line: None))
    _verify(folder, libraries, arch)
    return libraries


def _verify(folder: Path, libraries: list[Path], arch: str) -> None:
    try:
        recorded = json.loads((folder / SOURCES).read_text())["sha256"]
        for path in libraries:
            if sha256_of(path) != recorded[path.name]:
                raise ValueError(f"{path.name} does not match its recorded sha256")
            check_elf_arch(path, arch)
    except (OSError, ValueError, KeyError, DeploytoolError) as err:
        raise DeploytoolError(f"the cached {arch} TVM runtime in {folder} is damaged ({err})",
                              f"Delete {folder} to fetch it again") from err


def _fetch(folder: Path, arch: str, log: Log) -> None:
    """Download the wheels into a scratch folder, extract and check the libraries, then publish."""
    requirements = [f"{dist}=={version}" for dist, version in tvm_versions().items()]
    log(f"  fetching the {arch} TVM runtime ({', '.join(requirements)}) into {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent))
    try:
        _download(scratch, arch, requirements)
        if (folder / SOURCES).is_file():  # another process published it meanwhile
            return
        if folder.exists():  # an entry without SOURCES.json: a damaged one, ours to replace
            shutil.rmtree(folder)
        os.replace(scratch, folder)  # atomic: a half fetch never looks like a cache entry
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(scratch: Path, arch: str, requirements: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--retries", "1", "--timeout", "20",
               "--disable-pip-version-check", "-d", str(scratch / "wheels"),
               *(arg for tag in PLATFORMS for arg in ("--platform", tag)), *requirements]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise DeploytoolError(
            f"could not download the {arch} TVM runtime wheels ({last})",
            f"Connect to PyPI once (they are cached in {cache_root()}), or run `pip download "
            f"--no-deps --only-binary=:all: --platform {PLATFORMS[0]} --python-version "
            f"{PYTHON_VERSION} {' '.join(requirements)} -d DIR` elsewhere and pass "
            f"--runtime-dir DIR")
    record = {"arch": arch, "requirements": requirements, "wheels": {}, "sha256": {}}
    for name, (dist, member) in WHEEL_MEMBERS.items():
        wheel = next((scratch / "wheels").glob(f"{dist.replace('-', '_')}-*.whl"), None)
        if wheel is None:
            raise DeploytoolError(f"pip downloaded no {dist} wheel for {arch}",
                                  "Pass --runtime-dir with the libraries")
        _extract(wheel, member, scratch / name)
        check_elf_arch(scratch / name, arch)
        record["wheels"][wheel.name] = sha256_of(wheel)
        record["sha256"][name] = sha256_of(scratch / name)
    shutil.rmtree(scratch / "wheels")
    (scratch / SOURCES).write_text(json.dumps(record, indent=2) + "\n")
