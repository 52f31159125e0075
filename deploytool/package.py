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

from .errors import DeploytoolError
from .frontends import sha256_of
from .java import readme_section as java_readme_section
from .native import RUNTIME_SRC
from .tensors import TensorSpec

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
def atomic_folder(destination: Path, force: bool) -> Iterator[Path]:
    """Yield a scratch folder beside ``destination`` that becomes it only if the block succeeds."""
    if destination.exists() and not force:
        raise DeploytoolError(f"output folder {destination} already exists",
                              "Pass --force to replace it, or choose another with -o")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield scratch
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            os.replace(destination, old)
            os.replace(scratch, destination)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(scratch, destination)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


def write_examples(package_dir: Path, manifest: dict) -> None:
    """Copy the C++ example and write the package README."""
    examples = package_dir / "examples" / "cpp"
    examples.mkdir(parents=True, exist_ok=True)
    for name in ("main.cc", "CMakeLists.txt"):
        shutil.copy2(RUNTIME_SRC / "examples" / "cpp" / name, examples / name)
    inputs = "\n".join(f"- `{d['name']}`: {d['dtype']} {d['shape']}" for d in manifest["inputs"])
    outputs = "\n".join(f"- `{d['name']}`: {d['dtype']} {d['shape']}" for d in manifest["outputs"])
    (package_dir / "README.md").write_text(f"""# {manifest['model']['name']}: a deploytool package

Compiled for `{manifest['target']['name']}` ({manifest['target']['target']}), architecture
`{manifest['runtime']['arch']}`. Needs no Python: everything it loads is in this folder.

Inputs:
{inputs}

Outputs:
{outputs}

## Run it

    bin/deploytool-run --self-test               # check this package on this machine first
    bin/deploytool-run --repeat 100              # seeded random inputs, prints the timings
    bin/deploytool-run --input {manifest['inputs'][0]['name']}=x.npy --output-dir out/
{_emulation_note(manifest['runtime']['arch'])}
## Use it from C++

    g++ -std=c++17 examples/cpp/main.cc -Iinclude -Llib -ldeploytool \\
        -Wl,-rpath,'$ORIGIN/lib' -o example
    ./example .

or with CMake: `cmake -S examples/cpp -B build && cmake --build build && build/example .`

The C API is `include/deploytool.h`; `include/deploytool.hpp` wraps it in a RAII class:

```cpp
deploytool::Model model("path/to/package");          // throws deploytool::Error
// buffers of inputs()[i].nbytes and outputs()[i].nbytes bytes
model.run({{input.data()}}, {{output.data()}});
```

A model may be shared by threads (runs are serialised); load one per thread for parallel runs.
""" + java_readme_section(manifest))


def _emulation_note(arch: str) -> str:
    """For a cross-compiled package: how to run it on an x86-64 machine, for the package README."""
    if arch != "aarch64":
        return ""
    return """
On an x86-64 Linux machine, run it under emulation (apt-get install qemu-user-static
g++-aarch64-linux-gnu; the second provides the aarch64 libc and libstdc++):

    QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64-static bin/deploytool-run --repeat 10
"""


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
