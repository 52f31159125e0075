"""The package: a folder with model.so, manifest.json, runtime libraries, headers and a runner."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..common import sha256_of
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
        """Write the manifest back atomically (later steps add validation, tuning, benchmarks)."""
        scratch = self.path / f".{MANIFEST}.tmp"
        scratch.write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")
        os.replace(scratch, self.path / MANIFEST)


def load_package(path: str | Path) -> Package:
    """Open a package folder, checking that it is one."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DeploytoolError(f"{path} is not a deploytool package (no {MANIFEST})",
                              "Pass the folder written by deploytool compile")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise DeploytoolError(f"{manifest_path} is corrupted ({err})",
                              "Compile the package again") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DeploytoolError(
            f"{path} has package format {manifest.get('format_version')}, this deploytool reads "
            f"format {FORMAT_VERSION}", "Compile the package again with this deploytool")
    return Package(path, manifest)


@contextmanager
def atomic_folder(destination: Path, force: bool, keep_on_failure: bool = False) -> Iterator[Path]:
    """Yield a scratch folder beside ``destination`` that becomes it only if the block succeeds.

    On failure the scratch folder is removed, or with ``keep_on_failure`` kept, the error then
    carrying a note with its path (``compile --keep-temps``).
    """
    if destination.exists() and not force:
        raise DeploytoolError(f"output folder {destination} already exists",
                              "Pass --force to replace it, or choose another with -o")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield scratch
        _replace_folder(scratch, destination)
    except BaseException as err:
        if keep_on_failure:
            err.add_note(f"scratch folder kept at {scratch}")
        raise
    finally:
        if scratch.exists() and not keep_on_failure:
            shutil.rmtree(scratch)


def _replace_folder(scratch: Path, destination: Path) -> None:
    """Rename ``scratch`` to ``destination``, replacing what is there."""
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
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
    scratch = archive.with_name(f".{archive.name}.tmp")
    with tarfile.open(scratch, "w:gz") as tar:
        tar.add(package_dir, arcname=package_dir.name)
    os.replace(scratch, archive)
    return archive
