"""``deploytool bench PKG1 PKG2 ... --together``: several models in one process, a thread each.

One worker process per backend (the packages through the C API, then ONNX Runtime sessions on
the packages' model.onnx) loads every model, times each alone, then all at once, each in its
own thread, for the same time: a model's latency together beside its latency alone is what
sharing the process costs it. The runs use the packages' test vectors, and the last outputs of
the concurrent runs are checked against the reference outputs.

The worker runs as ``python -m deploytool.bench.together`` and imports neither click nor the
compiler. Its timing loop is in Python: the C API and ONNX Runtime release the GIL while they
run, and the loop's own cost (microseconds) is the same alone and together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKENDS = ("package", "onnxruntime")
LABELS = {"package": "package", "onnxruntime": "ONNX Runtime"}
SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Loaded:
    """A model ready to time: ``run`` runs it once on the test inputs, ``outputs`` gives the
    last outputs in the manifest's order."""

    name: str
    run: Callable[[], None]
    outputs: Callable[[], list[np.ndarray]]


def test_vectors(package: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray], float, float]:
    """The package's self-test inputs by name, reference outputs, atol and rtol."""
    manifest = json.loads((package / "manifest.json").read_text())
    test = manifest["self_test"]
    names = [spec["name"] for spec in manifest["inputs"]]
    inputs = {name: np.load(package / item["file"]) for name, item in zip(names, test["inputs"],
                                                                           strict=True)}
    references = [np.load(package / item["file"]) for item in test["outputs"]]
    return inputs, references, test["atol"], test["rtol"]


def _load_package(package: Path, inputs: dict[str, np.ndarray], threads: int) -> Loaded:
    from ..runtime import binding

    model = binding.load(package, threads=threads)
    state = {}

    def run():
        state["outputs"] = model.run(inputs)

    return Loaded(package.name, run, lambda: list(state["outputs"].values()))


def _load_onnxruntime(package: Path, inputs: dict[str, np.ndarray], threads: int) -> Loaded:
    from ..verify.references import onnxruntime_session

    session = onnxruntime_session(package / "model.onnx", threads or len(os.sched_getaffinity(0)))
    names = [o.name for o in session.get_outputs()]
    state = {}

    def run():
        state["outputs"] = session.run(names, inputs)

    return Loaded(package.name, run, lambda: state["outputs"])


LOADERS = {"package": _load_package, "onnxruntime": _load_onnxruntime}


def time_runs(model: Loaded, seconds: float, warmup_ms: float) -> list[float]:
    """Warm up, then run for ``seconds`` (at least 3 runs); the latencies in ms."""
    clock = time.perf_counter
    warm_until = clock() + warmup_ms / 1e3
    while clock() < warm_until:
        model.run()
    latencies = []
    until = clock() + seconds
    while clock() < until or len(latencies) < 3:
        begin = clock()
        model.run()
        latencies.append((clock() - begin) * 1e3)
    return latencies


def time_together(models: list[Loaded], seconds: float, warmup_ms: float) -> list[list[float]]:
    """Every model in a thread of its own, started together; the latencies of each."""
    start = threading.Barrier(len(models))
    results: list[list[float]] = [[] for _ in models]
    errors: list[BaseException] = []

    def loop(index: int) -> None:
        try:
            start.wait()
            results[index] = time_runs(models[index], seconds, warmup_ms)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(models))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def summary(latencies: list[float]) -> dict:
    ordered = np.sort(np.asarray(latencies))
    return {"runs": len(latencies), "p50_ms": float(np.percentile(ordered, 50)),
            "p99_ms": float(np.percentile(ordered, 99)), "max_ms": float(ordered[-1])}


def max_error(outputs: list[np.ndarray], references: list[np.ndarray], atol: float,
              rtol: float) -> tuple[float, bool]:
    """The largest |out - ref| and whether every output is within atol + rtol * |ref|."""
    worst, passed = 0.0, True
    for out, ref in zip(outputs, references, strict=True):
        out, ref = np.asarray(out, np.float64).reshape(ref.shape), ref.astype(np.float64)
        worst = max(worst, float(np.max(np.abs(out - ref), initial=0.0)))
        passed = passed and bool(np.all(np.abs(out - ref) <= atol + rtol * np.abs(ref)))
    return worst, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--warmup-ms", type=float, default=200)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    vectors = [test_vectors(package) for package in args.packages]
    models = [LOADERS[args.backend](package, inputs, args.threads)
              for package, (inputs, _, _, _) in zip(args.packages, vectors, strict=True)]
    alone = [time_runs(model, args.seconds, args.warmup_ms) for model in models]
    together = time_together(models, args.seconds, args.warmup_ms)
    report = []
    for model, (_, references, atol, rtol), solo, shared in zip(models, vectors, alone, together,
                                                                 strict=True):
        error, passed = max_error(model.outputs(), references, atol, rtol)
        report.append({"model": model.name, "alone": summary(solo), "together": summary(shared),
                       "max_abs_error": error, "outputs_match": passed})
    Path(args.json).write_text(json.dumps({"backend": args.backend, "threads": args.threads,
                                           "seconds": args.seconds, "models": report}))
    return 0


def check_together(packages: list[Path], backends: list[str], threads: int | None) -> None:
    """Raise a one-line DeploytoolError for what cannot be benched together."""
    from ..errors import DeploytoolError, UsageError

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"--together compares with {', '.join(BACKENDS[1:])} only, not "
                         f"{', '.join(unknown)}", "Pass --compare onnxruntime, or no --compare")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads is {threads}", "Pass --threads 1 or more")
    for package in packages:
        manifest = package / "manifest.json"
        if not manifest.is_file():
            raise DeploytoolError(f"{package} is not a deploytool package (no manifest.json)",
                                  "Pass folders that deploytool compile wrote")
        if not json.loads(manifest.read_text()).get("self_test"):
            raise DeploytoolError(f"{package} carries no test vectors",
                                  "Compile it again with deploytool")
        if "onnxruntime" in backends and not (package / "model.onnx").is_file():
            raise DeploytoolError(f"{package} has no model.onnx for ONNX Runtime",
                                  "Compile it again with deploytool, or drop --compare")


def run_worker(backend: str, packages: list[Path], threads: int, seconds: float,
               warmup_ms: float) -> dict:
    """Run the worker for ``backend`` in a fresh process; its report."""
    from ..errors import DeploytoolError

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "together.json"
        command = [sys.executable, "-m", "deploytool.bench.together", backend,
                   *map(str, packages), "--threads", str(threads), "--seconds", str(seconds),
                   "--warmup-ms", str(warmup_ms), "--json", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise DeploytoolError(f"the {LABELS[backend]} models failed together: {last}",
                                  "Run each package alone with deploytool bench to find which")
        return json.loads(out.read_text())


def format_together(reports: list[dict]) -> str:
    """A Markdown table: each model's p50/p99 alone and together, and the p50 ratio."""
    lines = ["| model | backend | alone p50 / p99 ms | together p50 / p99 ms | together / alone "
             "(p50) | outputs |", "|---|---|---|---|---|---|"]
    for report in reports:
        for row in report["models"]:
            alone, shared = row["alone"], row["together"]
            lines.append(
                f"| {row['model']} | {LABELS[report['backend']]} | {alone['p50_ms']:.2f} / "
                f"{alone['p99_ms']:.2f} | {shared['p50_ms']:.2f} / {shared['p99_ms']:.2f} | "
                f"{shared['p50_ms'] / alone['p50_ms']:.2f}x | "
                f"{'match' if row['outputs_match'] else 'DIFFER'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
