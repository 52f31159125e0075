"""The package README: one writer for every section (overview, C++, Java, GPU, dynamic shapes)."""

from __future__ import annotations

from pathlib import Path

from ..tensors import TensorSpec, symbol_bounds
from ..toolchains.java import README_COMMANDS, RELEASE


def write_readme(package_dir: Path, manifest: dict) -> None:
    """Write the package's README.md: what it is, how to run it, from C++, Java, on a GPU."""
    sections = [_overview(manifest), _serve_section(package_dir, manifest),
                _java_section(manifest), _cuda_section(manifest), _dynamic_section(manifest)]
    (package_dir / "README.md").write_text("".join(sections))


def _overview(manifest: dict) -> str:
    inputs = "\n".join(f"- `{d['name']}`: {d['dtype']} {d['shape']}" for d in manifest["inputs"])
    outputs = "\n".join(f"- `{d['name']}`: {d['dtype']} {d['shape']}" for d in manifest["outputs"])
    return f"""# {manifest['model']['name']}: a deploytool package

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
or with pkg-config: `make -C examples/cpp`. Your own CMake project takes the package with
`find_package(deploytool REQUIRED PATHS path/to/package)` and
`target_link_libraries(app PRIVATE deploytool::deploytool)`; a Makefile project with
`PKG_CONFIG_PATH=path/to/package/lib/pkgconfig pkg-config --cflags --libs deploytool`.

The C API is `include/deploytool.h`; `include/deploytool.hpp` wraps it in a RAII class:

```cpp
deploytool::Model model("path/to/package");          // throws deploytool::Error
// buffers of inputs()[i].nbytes and outputs()[i].nbytes bytes
model.run({{input.data()}}, {{output.data()}});
```

A model may be shared by threads (runs are serialised); load one per thread for parallel runs.

## Use it from Python (numpy only: no TVM, torch or ONNX)

```python
import deploytool.runtime as dt   # pip install --no-deps deploytool, and numpy
model = dt.load("path/to/package")
outputs = model.run({{"{manifest['inputs'][0]['name']}": x}})   # numpy arrays by name
```
"""


def _emulation_note(arch: str) -> str:
    """For a cross-compiled package: how to run it on an x86-64 machine, for the package README."""
    if arch != "aarch64":
        return ""
    return """
On an x86-64 Linux machine, run it under emulation (apt-get install qemu-user-static
g++-aarch64-linux-gnu; the second provides the aarch64 libc and libstdc++):

    QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64-static bin/deploytool-run --repeat 10
"""


def _serve_section(package_dir: Path, manifest: dict) -> str:
    """How to serve the package over HTTP, where it has bin/deploytool-serve (Boost was there)."""
    if not (package_dir / "bin" / "deploytool-serve").is_file():
        return ""
    name = manifest["model"]["name"]
    first = manifest["inputs"][0]
    shape = [d if isinstance(d, int) else 1 for d in first["shape"]]
    kind = {"float": "FP", "int": "INT", "uint": "UINT"}
    dtype = first["dtype"]
    datatype = "BOOL" if dtype == "bool" else next(
        (kind[k] + dtype[len(k):] for k in ("uint", "int", "float") if dtype.startswith(k)), dtype)
    return f"""
## Serve it over HTTP (KServe v2 / Open Inference Protocol)

    bin/deploytool-serve --port 8000 --workers 2   # on 127.0.0.1; --host 0.0.0.0 for all
    curl localhost:8000/v2/models/{name}          # metadata: inputs, outputs, datatypes, shapes
    curl localhost:8000/v2/models/{name}/infer -d '{{"inputs": [{{"name": "{first['name']}",
      "shape": {shape}, "datatype": "{datatype}", "data": [...]}}]}}'

SIGTERM or Ctrl-C finishes the requests in flight, then exits. `bin/deploytool-serve --help`
lists the options (queue bound, body limit, workers).
"""


def _java_section(manifest: dict) -> str:
    """The package README's Java section, or "" when the package has no Java binding."""
    java = manifest.get("java") or {}
    if not java.get("built"):
        return ""
    entries = ",\n".join(f'      "{d["name"]}", {_java_tensor(d)}' for d in manifest["inputs"])
    return f"""
## Use it from Java (JDK {RELEASE} or later)

    {README_COMMANDS[0]}
    {README_COMMANDS[1]}          # add INPUT.npy files to use your own inputs

`java/deploytool.jar` (package `ai.deploytool`) finds `lib/libdeploytool_jni.so` beside itself:

```java
try (Model model = Model.load(Paths.get("path/to/package"))) {{  // throws DeploytoolException
  Map<String, Tensor> outputs = model.run(Map.of(
{entries}));
  // also: model.run(Tensor...), Tensor.wrap(directByteBuffer, dtype, shape) with no copy
}}
```

A `Model` may be shared by threads (runs take turns); load one per thread for parallel runs.
"""


def _java_tensor(spec: dict) -> str:
    shape = ", ".join(map(str, spec["shape"]))
    count = 1
    for dim in spec["shape"]:
        count *= dim
    array = {"float32": "float", "int64": "long", "int32": "int"}.get(spec["dtype"])
    if array is None:
        return f"Tensor.allocate(DType.{spec['dtype'].upper()}, {shape})"
    return f"Tensor.of(new {array}[{count}], {shape})"


def _cuda_section(manifest: dict) -> str:
    """The package README's paragraph on what a CUDA package needs; empty for CPU packages."""
    cuda = manifest.get("runtime", {}).get("cuda")
    if not cuda:
        return ""
    return f"""
## GPU

Compiled for NVIDIA `{cuda['arch']}` ({', '.join(cuda['kernels'])}, nvcc {cuda['nvcc']}).
The deployment machine needs:

- {cuda['needs']}.

Everything else is in `lib/`: the CUDA runtime `{cuda['cuda_runtime'].split()[0]}` and TVM's
`libtvm_runtime_cuda.so`.

    bin/deploytool-run --device cuda:0 --repeat 100

The C API takes `"cuda"` or `"cuda:N"` (NULL means the package's own device, `cuda:0` here):
`dt_run` copies host buffers to the GPU and back; `dt_run_dlpack` (`include/deploytool_dlpack.h`)
takes and returns tensors that stay on the GPU.
"""


def _dynamic_section(manifest: dict) -> str:
    """For a package with symbolic dimensions: how to run it, for the package README."""
    inputs = [TensorSpec.from_dict(d) for d in manifest["inputs"]]
    if not any(s.is_dynamic for s in inputs):
        return ""
    bounds = symbol_bounds(inputs)
    symbols = ", ".join(f"{sym} from 1 to {b}" if b else f"{sym} from 1 up (no bound)"
                        for sym, b in bounds.items())
    first = next(s for s in inputs if s.is_dynamic)
    shape = "x".join(str(3 if isinstance(d, str) else d) for d in first.shape)
    return f"""
## Dynamic shapes

This package has symbolic dimensions ({symbols}): one model.so runs every size. The runner takes
the size from each `--input` file, or from `--shape {first.name}={shape}` for random inputs
(default: size 1). In C, `dt_input_info` reports -1 for a symbolic dimension and `max_shape`
holds its bound; `dt_run` refuses the package, `dt_run_shaped` runs it:

```cpp
std::vector<deploytool::Shape> shapes = {{{{{shape.replace('x', ', ')}}}}};
auto out_shapes = model.output_shapes(shapes);   // size the output buffers from these
model.run(shapes, {{input.data()}}, {{output.data()}});
```

A size above the bound is refused with DT_ERR_ARGUMENT. The Java binding runs static packages
only.
"""
