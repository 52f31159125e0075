"""The references a package is checked and timed against: ONNX Runtime, TorchScript, torch.export.

Validation (verify/validate.py) and the benchmark worker (bench/worker.py) both load them here,
so that both compare the package with the same sessions and the same output flattening.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..common import sha256_of

if TYPE_CHECKING:
    from ..package.manifest import Package


class Unavailable(Exception):
    """A reference cannot run on the asked device here (its message says what to install)."""


def onnxruntime_session(model: Path | str | bytes, threads: int | None = None,
                        device: str = "cpu", optimized: bool = True):
    """An ONNX Runtime session on ``model`` (a file, or a serialised ModelProto), sequential,
    on ``threads`` intra-op threads (None: ONNX Runtime's default), on the CPU or (``cuda:N``)
    the CUDA execution provider; without its graph optimizations (``optimized`` False) it runs
    each node as the graph reads (a QDQ model's in float, between its quantize nodes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers: list = ["CPUExecutionProvider"]
    if device != "cpu":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Unavailable("this onnxruntime has no CUDAExecutionProvider: install "
                              "onnxruntime-gpu, or drop onnxruntime from --compare")
        providers = [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])})]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers)


def openvino_model(model: Path | str, threads: int | None = None, device: str = "cpu",
                   precision: str = "f32"):
    """OpenVINO's CPU plugin compiling ``model`` (ONNX) as a peer is measured: in ``precision``
    (its ``INFERENCE_PRECISION_HINT``, f32 or bf16), latency mode, on ``threads`` threads (None:
    its default)."""
    import openvino as ov

    if device != "cpu":
        raise Unavailable("deploytool compares OpenVINO on the CPU only: drop openvino from "
                          "--compare for a GPU package")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return ov.Core().compile_model(str(model), "CPU", config)


def named_outputs(result) -> list[tuple[str, object]]:
    """A model's result flattened to ``(name, value)`` pairs, Nones left out.

    A tensor is ``output``; the elements of a tuple or list are ``output0``, ``output1``...; a
    dict's values and a NamedTuple's fields take their keys and field names; nested structures
    join the names with ``_`` (``output1_0``, ``out_logits``). The order is Python's flattening
    order (dicts by insertion), which is also torch.export's and the ONNX exporter's.
    """
    pairs: list[tuple[str, object]] = []

    def visit(value, name: str | None) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
            items = list(zip(value._fields, value, strict=True))
        elif isinstance(value, list | tuple):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            pairs.append((name or "output", value))
            return
        for key, item in items:
            visit(item, f"{name}_{key}" if name else
                  (key if isinstance(value, dict) or hasattr(value, "_fields") else
                   f"output{key}"))

    visit(result, None)
    if len(pairs) == 1 and pairs[0][0] == "output0":  # a one-tensor tuple, as a tensor
        pairs = [("output", pairs[0][1])]
    return pairs


def flat_outputs(result) -> list:
    """A model's result as a flat list of its values (see :func:`named_outputs`)."""
    return [value for _, value in named_outputs(result)]


def to_numpy(tensors: list) -> list[np.ndarray]:
    """torch tensors (on any device) as numpy arrays."""
    return [t.detach().cpu().numpy() for t in tensors]


def compiled_model_file(package: Package, fmt: str) -> Path | None:
    """The model file ``package`` was compiled from, when it is still where the manifest says,
    unchanged (same sha256), and of format ``fmt``; else None."""
    source = package.manifest.get("model") or {}
    if source.get("format") != fmt:
        return None
    recorded = Path(str((package.manifest.get("compile_options") or {}).get("model", "")))
    if recorded.is_file() and sha256_of(recorded) == source.get("sha256"):
        return recorded
    return None
