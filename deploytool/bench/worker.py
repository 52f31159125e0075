"""Timing loop for ONNX Runtime and TorchScript, run as a subprocess like the native runner.

Started as ``python -m deploytool.bench.worker`` (it imports neither click nor the compiler) with
the same options as ``bin/deploytool-run`` and writing the same JSON, so that every backend is
measured the same way: a fresh process, load, first run, warm-up, then timed runs on inputs read
from the same .npy files, with buffers made once before the loop.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from ..frontends.custom_ops import load_inherited_libraries
from ..verify.references import (
    Unavailable,
    flat_outputs,
    onnxruntime_session,
    openvino_model,
    to_numpy,
)


def peak_rss_kb() -> int:
    """Peak resident memory of this process in KiB (VmHWM; ru_maxrss survives exec, so under a
    large parent it would report the parent's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _ms_since(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6


def _load_onnxruntime(model: str, arrays: dict[str, np.ndarray], threads: int, device: str):
    """Session on the package's model.onnx; returns (first_run, timed_run, outputs). On a GPU,
    the CUDA execution provider, with inputs and outputs in host memory as dt_run has them."""
    session = onnxruntime_session(model, threads, device)
    names = [o.name for o in session.get_outputs()]
    state = {}

    def first():
        state["outputs"] = session.run(names, arrays)
        # Bind the inputs and output buffers once, so the timed runs allocate nothing in Python.
        binding = session.io_binding()
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        state["buffers"] = [np.empty_like(o) for o in state["outputs"]]
        for name, buffer in zip(names, state["buffers"], strict=True):
            binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape),
                                buffer.ctypes.data)
        state["binding"] = binding

    def timed():
        session.run_with_iobinding(state["binding"])

    return first, timed, lambda: state["buffers"]


def _load_torchscript(model: str, arrays: dict[str, np.ndarray], threads: int, device: str):
    """The ScriptModule as saved, in eval mode under no_grad; returns (first, timed, outputs).

    On a GPU this is PyTorch eager on that GPU in strict fp32 (TF32 off): each run copies the
    inputs from host memory and the outputs back (which waits for the GPU), as dt_run does.
    """
    import torch

    torch.set_num_threads(threads)
    if device != "cpu":
        if not torch.cuda.is_available():
            raise Unavailable(f"this PyTorch cannot use {device} (torch {torch.__version__} has "
                              "no CUDA, or sees no GPU): install a CUDA build of PyTorch")
        # The package computes in fp32; PyTorch's convolutions default to TF32.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    load_inherited_libraries()  # --torch-library of the deploytool that started this worker
    module = torch.jit.load(model, map_location=device)
    module.eval()
    tensors = [torch.from_numpy(a) for a in arrays.values()]  # forward()'s order
    state = {}

    def run():
        with torch.no_grad():
            state["result"] = module(*tensors)

    def run_on_gpu():
        with torch.no_grad():
            result = module(*(t.to(device) for t in tensors))
        state["result"] = [t.to("cpu") for t in flat_outputs(result)]

    def outputs():
        return to_numpy(flat_outputs(state["result"]))

    timed = run if device == "cpu" else run_on_gpu
    return timed, timed, outputs


def _load_openvino(model: str, arrays: dict[str, np.ndarray], threads: int, device: str,
                   precision: str = "f32"):
    """OpenVINO's CPU plugin on the package's model.onnx (latency mode, ``precision`` its
    inference precision hint); the inputs are set once as tensors sharing the arrays' memory,
    so the timed runs allocate nothing."""
    import openvino as ov

    compiled = openvino_model(model, threads, device, precision)
    request = compiled.create_infer_request()
    for port in compiled.inputs:
        name = port.get_any_name()
        request.set_tensor(port, ov.Tensor(arrays[name], shared_memory=True))

    def outputs():
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

    return request.infer, request.infer, outputs


LOADERS = {"onnxruntime": _load_onnxruntime, "torchscript": _load_torchscript,
           "openvino": _load_openvino,
           "openvino-bf16": functools.partial(_load_openvino, precision="bf16")}
MODULES = {"onnxruntime": "onnxruntime", "torchscript": "torch", "openvino": "openvino",
           "openvino-bf16": "openvino"}


def _percentile(ordered: list[float], q: float) -> float:
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=sorted(LOADERS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--warmup-ms", type=float, default=200)
    parser.add_argument("--min-iters", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=3)
    parser.add_argument("--json", required=True)
    parser.add_argument("--output-dir")
    args = parser.parse_args(argv)

    rss_before_load_kb = peak_rss_kb()
    start = time.perf_counter_ns()
    importlib.import_module(MODULES[args.backend])
    import_ms = _ms_since(start)
    arrays = {}
    for spec in args.input:
        name, path = spec.split("=", 1)
        arrays[name] = np.ascontiguousarray(np.load(path))
    start = time.perf_counter_ns()
    try:
        first, timed, outputs = LOADERS[args.backend](args.model, arrays, args.threads,
                                                      args.device)
    except Unavailable as err:
        print(err, file=sys.stderr)
        return 2
    load_ms = _ms_since(start)
    start = time.perf_counter_ns()
    first()
    first_ms = _ms_since(start)

    warm = time.perf_counter_ns()
    warmup_iters = 0
    while _ms_since(warm) < args.warmup_ms:
        timed()
        warmup_iters += 1
    clock = time.perf_counter_ns
    times = []
    loop = clock()
    min_ns = args.min_seconds * 1e9
    while True:
        begin = clock()
        timed()
        end = clock()
        times.append((end - begin) / 1e6)
        if len(times) >= args.min_iters and end - loop >= min_ns:
            break
    wall_s = (end - loop) / 1e9

    ordered = sorted(times)
    stats = {"min_ms": ordered[0], "mean_ms": sum(times) / len(times),
             "p50_ms": _percentile(ordered, 50), "p90_ms": _percentile(ordered, 90),
             "p99_ms": _percentile(ordered, 99), "max_ms": ordered[-1],
             "throughput_per_s": len(times) / wall_s if wall_s > 0 else 0.0}
    if args.output_dir:
        for i, array in enumerate(outputs()):
            np.save(Path(args.output_dir) / f"output{i}.npy", array)
    report = {"backend": args.backend, "model": args.model, "device": args.device,
              "threads": args.threads,
              "import_ms": import_ms, "load_ms": load_ms, "first_run_ms": first_ms,
              "warmup_ms": args.warmup_ms, "warmup_iters": warmup_iters,
              "min_iters": args.min_iters, "min_seconds": args.min_seconds,
              "iterations": len(times), "wall_s": wall_s, "stats": stats,
              "rss_before_load_kb": rss_before_load_kb, "peak_rss_kb": peak_rss_kb(),
              "latencies_ms": times}
    scratch = args.json + ".tmp"
    with open(scratch, "w") as f:
        json.dump(report, f)
    os.replace(scratch, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
