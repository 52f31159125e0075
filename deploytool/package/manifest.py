"""The package: a folder with model.so, manifest.json, runtime libraries, headers and a runner."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..common import DISK_FULL, disk_full_error, exclusive_lock, pid_alive, sha256_of
from ..errors import DeploytoolError
from ..tensors import TensorSpec
from ..toolchains.native import RUNTIME_SRC

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class Package:
    """A package folder and its manifest."""

    path: Path
    manifest: dict

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["outputs"]]

    @property
    def runner(self) -> Path:
        return self.path / "bin" / "deploytool-run"

    def save_manifest(self) -> None:
        """Write the manifest back atomically (later steps add validation, tuning, benchmarks).

        Raises ReadOnlyPackage when the folder cannot be written, DeploytoolError on a full disk.
        """
        scratch = self.path / f".{MANIFEST}.tmp-{os.getpid()}"
        try:
            scratch.write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")
            os.replace(scratch, self.path / MANIFEST)
        except OSError as err:
            with suppress(OSError):
                scratch.unlink(missing_ok=True)
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ReadOnlyPackage(f"package {self.path} is read-only, so its {MANIFEST} "
                                      f"was not updated ({os.strerror(err.errno)})",
                                      "Make it writable, or copy it somewhere writable") from err
            if err.errno in DISK_FULL:
                raise disk_full_error(err, self.path / MANIFEST) from err
            raise


class ReadOnlyPackage(DeploytoolError):
    """A package whose manifest cannot be written (a read-only folder or file system)."""


def load_package(path: str | Path) -> Package:
    """Open a package folder, checking that it is one and that its manifest is well formed.

    The manifest is data, not trusted: a missing or mistyped entry, a ``files`` entry outside
    the package, or a file list without model.so or a test vector makes a DeploytoolError that
    names the damage (see :func:`check_manifest`).
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        what = "is not a folder" if path.exists() and not path.is_dir() else f"has no {MANIFEST}"
        raise DeploytoolError(f"{path} is not a deploytool package (it {what})",
                              "Pass the folder written by deploytool compile")
    damaged = f"{manifest_path} is damaged"
    try:
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{manifest_path.stat().st_size} bytes, more than a manifest holds")
        manifest = json.loads(manifest_path.read_bytes())
    except (ValueError, RecursionError) as err:  # bad JSON, bad UTF-8, nested too deep
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise DeploytoolError(f"{damaged} (not valid JSON: {reason})",
                              "Compile the package again") from err
    except OSError as err:
        raise DeploytoolError(f"{manifest_path} cannot be read ({os.strerror(err.errno or 0)})",
                              "Check its permissions") from err
    if not isinstance(manifest, dict):
        raise DeploytoolError(f"{damaged} (not a JSON object)", "Compile the package again")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DeploytoolError(
            f"{path} has package format {manifest.get('format_version')}, this deploytool reads "
            f"format {FORMAT_VERSION}", "Compile the package again with this deploytool")
    problem = check_manifest(manifest)
    if problem:
        raise DeploytoolError(f"{damaged} ({problem})", "Compile the package again")
    return Package(path, manifest)


MAX_MANIFEST_BYTES = 64 << 20
# Entry -> type every reader relies on; others (validation, benchmarks, tuning) are optional.
REQUIRED = {"model": dict, "inputs": list, "outputs": list, "runtime": dict, "files": dict}
SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest(manifest: dict) -> str | None:
    """What is wrong with a manifest's structure (None: nothing): required entries and their
    types, tensor entries, and ``files``: names inside the package (relative, no ``..``)
    with sha256 digests, covering model.so and every test vector."""
    for key, kind in REQUIRED.items():
        if key not in manifest:
            return f"'{key}' is missing"
        if not isinstance(manifest[key], kind):
            return f"'{key}' is {type(manifest[key]).__name__}, not {kind.__name__}"
    for key in ("name", "format", "sha256"):
        if not isinstance(manifest["model"].get(key), str):
            return f"'model.{key}' is missing or not a string"
    if not isinstance(manifest["runtime"].get("arch"), str):
        return "'runtime.arch' is missing or not a string"
    for kind in ("inputs", "outputs"):
        if not manifest[kind]:
            return f"'{kind}' is empty"
        for entry in manifest[kind]:
            try:
                TensorSpec.from_dict(entry if isinstance(entry, dict) else {})
            except DeploytoolError:
                return f"'{kind}' holds an invalid tensor entry {json.dumps(entry)[:200]}"
    for key, kind in (("compile_options", dict), ("self_test", dict), ("target", dict),
                      ("input_ranges", dict)):
        if manifest.get(key) is not None and not isinstance(manifest[key], kind):
            return f"'{key}' is {type(manifest[key]).__name__}, not {kind.__name__}"
    for name, pair in (manifest.get("input_ranges") or {}).items():
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)):
            return f"'input_ranges.{name}' is not a [low, high] pair of numbers"
    files = manifest["files"]
    for name, digest in files.items():
        if not confined(name):
            return f"'files' names {name!r}, which is not a path inside the package"
        if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
            return f"'files.{name}' is not a sha256 digest"
    vectors = []
    self_test = manifest.get("self_test") or {}
    for kind in ("inputs", "outputs"):
        entries = self_test.get(kind, [])
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get("file"), str) for e in entries):
            return f"'self_test.{kind}' is not a list of {{name, file}} entries"
        vectors += [e["file"] for e in entries]
    missing = [name for name in ["model.so", *vectors] if name not in files]
    if missing:
        return f"'files' leaves out {', '.join(missing)}, so its digest is not checked"
    return None


def confined(name: str) -> bool:
    """Whether a manifest's file name stays inside the package: relative, no ``..``, no
    backslash or NUL, not empty."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and path.parts[:1] != ("",)


def verify_files(package: Package) -> None:
    """Raise a DeploytoolError naming the first file of ``files`` that is missing, outside the
    package (through a link), or whose sha256 differs from the manifest's."""
    root = package.path.resolve()
    for name, digest in package.manifest["files"].items():
        path = package.path / name
        damaged = f"package {package.path} is damaged: {name}"
        if not path.resolve().is_relative_to(root):
            raise DeploytoolError(f"{damaged} links outside the package",
                                  "Compile the package again")
        if not path.is_file():
            raise DeploytoolError(f"{damaged} is missing", "Compile the package again")
        if sha256_of(path) != digest:
            raise DeploytoolError(f"{damaged} does not match its sha256 in {MANIFEST}",
                                  "Compile the package again, or copy it again intact")


# Hidden folders beside a destination: a compile's scratch (.NAME.tmp-PID-HEX) and a replaced
# package on its way out (.NAME.old-PID-HEX), and an archive's scratch (.NAME.tar.gz.tmp-PID-HEX).
# --keep-temps names its scratch .NAME.keep-PID-HEX, which is never removed.
LEFTOVER = r"\.{name}\.(?:tmp|old|tar\.gz\.tmp)-(?P<pid>[0-9]+)-[0-9a-f]{{8}}"


def _scratch_path(destination: Path, kind: str) -> Path:
    return destination.with_name(f".{destination.name}.{kind}-{os.getpid()}-"
                                 f"{secrets.token_hex(4)}")


def remove_leftovers(destination: Path) -> list[Path]:
    """Remove what killed deploytools left beside ``destination`` (scratch folders, replaced
    packages, archive scratch files): only names of LEFTOVER whose process is gone. Returns
    what was removed. Call it holding the destination's lock."""
    pattern = re.compile(LEFTOVER.format(name=re.escape(destination.name)))
    removed = []
    try:
        entries = list(destination.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or pid_alive(int(match["pid"])):
            continue
        with suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _check_destination(destination: Path, force: bool) -> None:
    for parent in destination.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DeploytoolError(f"cannot write {destination}: {parent} is a file, not a "
                                      "folder", "Choose another output path with -o")
            break
    if destination.exists() and not force:
        kind = "folder" if destination.is_dir() else "file (not a folder)"
        raise DeploytoolError(f"output {destination} already exists and is a {kind}",
                              "Pass --force to replace a package, or choose another with -o")


@contextmanager
def atomic_folder(destination: Path, force: bool, keep_on_failure: bool = False,
                  archive: bool = False) -> Iterator[Path]:
    """Yield a scratch folder beside ``destination`` that becomes it only if the block succeeds.

    The destination is locked for the block (a ``.NAME.lock`` file beside it, fcntl): a second
    deploytool writing there fails at once. Leftovers of killed deploytools beside it are
    removed first (:func:`remove_leftovers`). The folder gets the umask's mode (0755 under
    the usual 022). On failure the scratch folder is removed, or with ``keep_on_failure`` kept,
    the error then carrying a note with its path (``compile --keep-temps``); a full disk becomes
    a DeploytoolError. With ``archive``, ``<destination>.tar.gz`` is written too, still locked.
    """
    shown, destination = destination, Path(os.path.abspath(destination))
    _check_destination(destination, force)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(err, destination.parent) from err
    lock = destination.with_name(f".{destination.name}.lock")
    with exclusive_lock(lock, lambda holder: DeploytoolError(
            f"output {shown} is being written by another deploytool ({holder})",
            "Wait for it to finish, or choose another output with -o")):
        _check_destination(destination, force)  # it may have appeared while we waited
        remove_leftovers(destination)
        scratch = _scratch_path(destination, "keep" if keep_on_failure else "tmp")
        try:
            scratch.mkdir(mode=0o777)  # minus the umask, unlike mkdtemp's 0700
        except OSError as err:
            raise _write_error(err, destination.parent) from err
        try:
            yield scratch
            _replace_folder(scratch, destination)
            if archive:
                write_archive(destination)
        except BaseException as err:
            if keep_on_failure and scratch.exists():
                err.add_note(f"scratch folder kept at {scratch}")
            if isinstance(err, OSError) and err.errno in DISK_FULL:
                raise disk_full_error(err, destination) from err
            raise
        finally:
            if scratch.exists() and not keep_on_failure:
                shutil.rmtree(scratch, ignore_errors=True)


def _write_error(err: OSError, where: Path) -> DeploytoolError:
    if err.errno in DISK_FULL:
        return disk_full_error(err, where)
    return DeploytoolError(f"cannot write into {where} ({os.strerror(err.errno or 0)})",
                           "Choose another output path with -o")


def _replace_folder(scratch: Path, destination: Path) -> None:
    """Rename ``scratch`` to ``destination``, replacing what is there."""
    if destination.exists():
        old = _scratch_path(destination, "old")
        os.replace(destination, old)
        os.replace(scratch, destination)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(scratch, destination)


def copy_cpp_example(package_dir: Path) -> None:
    """Copy the C++ example (main.cc, CMakeLists.txt, a pkg-config Makefile) into examples/cpp."""
    examples = package_dir / "examples" / "cpp"
    examples.mkdir(parents=True, exist_ok=True)
    for name in ("main.cc", "CMakeLists.txt", "Makefile"):
        shutil.copy2(RUNTIME_SRC / "examples" / "cpp" / name, examples / name)


def file_digests(package_dir: Path) -> dict[str, str]:
    """sha256 of the files whose corruption would change results: model.so and test vectors."""
    vectors = sorted(f"testdata/{p.name}" for p in (package_dir / "testdata").glob("*"))
    names = ["model.so", *vectors]
    return {name: sha256_of(package_dir / name) for name in names}


def write_test_vectors(package_dir: Path, inputs: list[TensorSpec], outputs: list[TensorSpec],
                       input_arrays: list, output_arrays: list, reference: str,
                       atol: float, rtol: float) -> dict:
    """Save inputs and reference outputs under testdata/; returns the manifest's self_test entry."""
    import numpy as np

    folder = package_dir / "testdata"
    folder.mkdir(exist_ok=True)
    entry: dict = {"reference": reference, "atol": atol, "rtol": rtol, "inputs": [], "outputs": []}
    for kind, specs, arrays in (("inputs", inputs, input_arrays),
                                ("outputs", outputs, output_arrays)):
        for i, (spec, array) in enumerate(zip(specs, arrays, strict=True)):
            name = f"testdata/{kind[:-1]}{i}.npy"
            np.save(package_dir / name, np.ascontiguousarray(array, dtype=spec.dtype))
            entry[kind].append({"name": spec.name, "file": name})
    return entry


def write_archive(package_dir: Path) -> Path:
    """Write ``<package>.tar.gz`` beside the folder, with the folder's name as its root."""
    archive = package_dir.with_name(package_dir.name + ".tar.gz")
    scratch = _scratch_path(archive, "tmp")  # .NAME.tar.gz.tmp-PID-HEX, a LEFTOVER name
    try:
        with tarfile.open(scratch, "w:gz") as tar:
            tar.add(package_dir, arcname=package_dir.name)
        os.replace(scratch, archive)
    finally:
        scratch.unlink(missing_ok=True)
    return archive
