"""bench: a package's latency and memory, beside ONNX Runtime and TorchScript on the same inputs."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..common import Log, npy_name, sha256_of
from ..errors import DeploytoolError, UsageError
from ..package.manifest import Package, ReadOnlyPackage, load_package, verify_files
from ..targets import machine_cpu_flags
from ..tensors import sample_inputs
from ..toolchains.emulation import can_run, runner_command
from ..verify.references import compiled_model_file

WORKER = "deploytool.bench.worker"
# --threads at most this many per usable CPU: oversubscribing a little can be measured, but
# thousands of threads only exhaust the machine.
THREADS_PER_CPU = 4
# The folder deploytool is imported from: the worker process imports it from there too.
SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = "package"


def max_threads() -> int:
    """The most threads a benchmark may ask for here (THREADS_PER_CPU per usable CPU)."""
    return THREADS_PER_CPU * len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class BenchOptions:
    """Every option of a benchmark, resolved; None means the default."""

    package: Path
    model: Path | None = None
    compare: tuple[str, ...] = ()
    warmup_ms: float = 200.0
    min_iters: int = 50
    min_seconds: float = 3.0
    threads: int | None = None
    rounds: int = 3
    seed: int = 0
    json: Path | None = None
    save: bool = True
    device: str | None = None  # "cuda:N" for a GPU package; None: the package's own device
    per_kernel: bool = False  # also time each kernel inside the model (CPU packages)

    def resolved_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def check(self) -> None:
        """Raise UsageError for settings that cannot give a measurement."""
        if self.min_iters < 1:
            raise UsageError(f"--min-iters is {self.min_iters}: a benchmark needs at least one "
                             "timed run", "Pass --min-iters 1 or more")
        if self.rounds < 1:
            raise UsageError(f"--rounds is {self.rounds}", "Pass --rounds 1 or more")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads is {self.threads}", "Pass --threads 1 or more")
        most = max_threads()
        if self.threads is not None and self.threads > most:
            raise UsageError(f"--threads is {self.threads}, more than {THREADS_PER_CPU} per CPU "
                             f"this process may use ({len(os.sched_getaffinity(0))})",
                             f"Pass --threads from 1 to {most}")
        for name, value in (("--warmup-ms", self.warmup_ms), ("--min-seconds", self.min_seconds)):
            if not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"{name} is {value}", f"Pass {name} 0 or more")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise UsageError(f"--device {self.device} is not a device",
                             "Pass cpu, cuda or cuda:N")
        if self.model is not None and "torchscript" not in self.compare:
            raise UsageError("--model is only used by --compare torchscript",
                             "Add torchscript to --compare, or drop --model")

    def round_settings(self) -> tuple[float, int, float]:
        """(warm-up ms, min iterations, min seconds) of one round: the totals split over rounds."""
        return (self.warmup_ms, math.ceil(self.min_iters / self.rounds),
                self.min_seconds / self.rounds)

    def display(self) -> str:
        compare = ", ".join(self.compare) if self.compare else "none"
        _, iters, seconds = self.round_settings()
        return (f"package  {self.package}\ncompare  {compare}\nthreads  {self.resolved_threads()}"
                f"\nrounds   {self.rounds} (interleaved), each: warm-up {self.warmup_ms:g} ms, "
                f"then at least {iters} runs and {seconds:g} s")


@dataclass(frozen=True)
class Stats:
    """Latency statistics of a series of runs, in milliseconds."""

    iterations: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    throughput_per_s: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolating linearly between closest ranks."""
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def compute_stats(latencies_ms: Sequence[float], wall_s: float | None = None) -> Stats:
    """Statistics of per-run latencies.

    Parameters
    ----------
    latencies_ms : sequence of float
        One latency per run, in milliseconds.
    wall_s : float, optional
        Wall-clock seconds the runs took; None means the sum of the latencies.

    Returns
    -------
    Stats
    """
    if len(latencies_ms) == 0:
        raise ValueError("no latencies")
    ordered = sorted(latencies_ms)
    wall = wall_s if wall_s is not None else sum(ordered) / 1000
    return Stats(iterations=len(ordered), min_ms=ordered[0], mean_ms=sum(ordered) / len(ordered),
                 p50_ms=percentile(ordered, 50), p90_ms=percentile(ordered, 90),
                 p99_ms=percentile(ordered, 99), max_ms=ordered[-1],
                 throughput_per_s=len(ordered) / wall if wall > 0 else 0.0)


@dataclass(frozen=True)
class Job:
    """What every round of every backend runs on: one package, one model, the same inputs."""

    package: Package
    model: Path | None
    inputs: list[tuple[str, Path]]
    threads: int
    device: str = "cpu"  # "cpu" or "cuda:N": where every backend runs


Command = Callable[[Job, tuple[float, int, float], Path, Path | None],
                   tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Backend:
    """A way to run the model: builds the command of one timed round."""

    name: str
    description: str
    command: Command
    python_module: str | None = None  # the Python package it needs, if any


def _timing_args(settings: tuple[float, int, float], json_path: Path,
                 output_dir: Path | None) -> list[str]:
    warmup_ms, min_iters, min_seconds = settings
    args = ["--warmup-ms", f"{warmup_ms:g}", "--min-iters", str(min_iters),
            "--min-seconds", f"{min_seconds:g}", "--json", str(json_path)]
    return args + (["--output-dir", str(output_dir)] if output_dir else [])


def _runner_command(job: Job) -> tuple[list[str], dict[str, str]]:
    """The package's runner on the job's inputs, and the environment it needs."""
    prefix, env = runner_command(job.package.manifest["runtime"]["arch"])
    inputs = [arg for name, path in job.inputs for arg in ("--input", f"{name}={path}")]
    command = [*prefix, str(job.package.runner), str(job.package.path), "--device", job.device,
               "--threads", str(job.threads), *inputs]
    return command, {**env, "TVM_NUM_THREADS": str(job.threads)}


def _package_command(job, settings, json_path, output_dir):
    command, env = _runner_command(job)
    return command + _timing_args(settings, json_path, output_dir), env


def _worker_command(backend: str, model: Callable[[Job], Path]) -> Command:
    def command(job, settings, json_path, output_dir):
        inputs = [arg for name, path in job.inputs for arg in ("--input", f"{name}={path}")]
        path = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
        return ([sys.executable, "-m", WORKER, backend, "--model", str(model(job)), "--device",
                 job.device, "--threads", str(job.threads), *inputs,
                 *_timing_args(settings, json_path, output_dir)], {"PYTHONPATH": path})

    return command


BACKENDS: dict[str, Backend] = {
    PACKAGE: Backend(PACKAGE, "the package's native runner (C++, TVM)", _package_command),
    "onnxruntime": Backend("onnxruntime", "ONNX Runtime on the package's model.onnx",
                           _worker_command("onnxruntime", lambda job: job.package.path
                                           / "model.onnx"), "onnxruntime"),
    "torchscript": Backend("torchscript", "the TorchScript model with torch.jit.load",
                           _worker_command("torchscript", lambda job: job.model), "torch"),
    "openvino": Backend("openvino", "OpenVINO's CPU plugin on the package's model.onnx (f32, "
                        "latency mode)", _worker_command("openvino", lambda job: job.package.path
                                                         / "model.onnx"), "openvino"),
    "openvino-bf16": Backend("openvino-bf16", "OpenVINO's CPU plugin on the package's "
                             "model.onnx with its bf16 inference precision hint",
                             _worker_command("openvino-bf16", lambda job: job.package.path
                                             / "model.onnx"), "openvino"),
}


# ``package:PATH`` in --compare: another package of the same model (its float32 build, its
# untuned build), run by its own runner in the same interleaved rounds.
OTHER_PACKAGE = "package:"


def _other_package(name: str) -> Backend:
    other = load_package(Path(name[len(OTHER_PACKAGE):]))

    def command(job, settings, json_path, output_dir):
        return _package_command(replace(job, package=other), settings, json_path, output_dir)

    return Backend(name, f"the package at {other.path}", command)


def _backend(name: str) -> Backend:
    return _other_package(name) if name.startswith(OTHER_PACKAGE) else BACKENDS[name]


def parse_compare(text: str | None) -> tuple[str, ...]:
    """Parse ``--compare onnxruntime,torchscript,package:PATH`` into backend names (the package
    itself is implied)."""
    names: list[str] = []
    for name in (text or "").split(","):
        name = name.strip()
        if name.startswith(OTHER_PACKAGE):
            _other_package(name)  # a folder that is not a package fails here, in one line
            names.append(name)
            continue
        name = name.lower()
        if not name or name == PACKAGE or name in names:
            continue
        if name not in BACKENDS:
            known = ", ".join(n for n in BACKENDS if n != PACKAGE)
            raise UsageError(f"unknown backend '{name}' in --compare",
                             f"Use {known} or package:PATH (comma-separated)")
        names.append(name)
    return tuple(names)


@dataclass
class BackendResult:
    """One backend's measurements, all rounds together."""

    name: str
    threads: int | None
    load_ms: float  # median over rounds of the model load
    first_run_ms: float  # median over rounds of the first run after the load
    stats: Stats
    peak_rss_kb: int  # the largest peak resident memory of a round's process
    rss_before_load_kb: int
    rounds: list[dict]
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)
    max_abs_diff: float | None = None  # of its outputs against the package's, same inputs

    def to_dict(self, latencies: bool = False) -> dict:
        data = {"threads": self.threads, "load_ms": self.load_ms,
                "first_run_ms": self.first_run_ms, "stats": asdict(self.stats),
                "peak_rss_kb": self.peak_rss_kb, "rss_before_load_kb": self.rss_before_load_kb,
                "max_abs_diff_vs_package": self.max_abs_diff, "rounds": self.rounds}
        return {**data, "latencies_ms": self.latencies_ms} if latencies else data


@dataclass
class BenchResult:
    """A benchmark: the package first, then the backends compared with it."""

    options: BenchOptions
    date: str
    machine: dict
    threads: int
    backends: list[BackendResult]
    schedule: list[str] = field(default_factory=list)  # "round:backend" in the order they ran
    inputs: list[np.ndarray] = field(default_factory=list, repr=False)
    kernels: list[dict] | None = None  # --per-kernel: see profile_kernels
    stored: bool = False  # whether the results went into the manifest (not: read-only package)

    def get(self, name: str) -> BackendResult:
        return next(b for b in self.backends if b.name == name)

    def ratio(self, name: str) -> float:
        """p50 latency of ``name`` over the package's (the package is 1.0; lower is faster)."""
        return self.get(name).stats.p50_ms / self.get(PACKAGE).stats.p50_ms

    def to_dict(self, latencies: bool = False) -> dict:
        warmup_ms, min_iters, min_seconds = self.options.round_settings()
        return {
            "date": self.date, "machine": self.machine, "threads": self.threads,
            "settings": {"warmup_ms": self.options.warmup_ms, "min_iters": self.options.min_iters,
                         "min_seconds": self.options.min_seconds, "rounds": self.options.rounds,
                         "per_round": {"warmup_ms": warmup_ms, "min_iters": min_iters,
                                       "min_seconds": min_seconds},
                         "inputs": f"seeded random, numpy default_rng({self.options.seed})"},
            "schedule": self.schedule,
            "ratio_is": "p50 latency / package p50 latency (lower is faster)",
            "backends": {b.name: {**b.to_dict(latencies), "ratio_p50": self.ratio(b.name)}
                         for b in self.backends},
            **({"kernels": self.kernels} if self.kernels is not None else {}),
        }


def machine_info() -> dict:
    """The CPU model, architecture, core counts and load of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def resolve_device(package: Package, requested: str | None) -> str:
    """Where the package runs: its own device (``cpu``, or ``cuda:0`` for a GPU package) or the
    requested ``cuda:N``."""
    kind = (package.manifest.get("runtime") or {}).get("device", "cpu")
    if requested is None:
        return "cuda:0" if kind == "cuda" else "cpu"
    if requested.split(":")[0] != kind:
        raise UsageError(f"package {package.path} runs on {kind}, not on {requested}",
                         "Drop --device" + (", or pass cuda:N" if kind == "cuda" else ""))
    return "cuda:0" if requested == "cuda" else requested


def check_runs_here(package: Package, device: str = "cpu") -> dict | None:
    """Raise DeploytoolError when this machine cannot run the package's native code on
    ``device``; return the GPU's name, architecture and driver for a GPU package."""
    runtime = package.manifest.get("runtime") or {}
    arch = runtime.get("arch", "unknown")
    gpu = None
    if device != "cpu":
        from ..toolchains.cuda import gpu_info, sm_number

        gpu = gpu_info(int(device.split(":")[1]))
        need = (runtime.get("cuda") or {}).get("arch", "sm_0")
        if int(sm_number(gpu["arch"])) < int(sm_number(need)):
            raise DeploytoolError(f"package {package.path} is compiled for {need}; {device} is "
                                  f"{gpu['name']} ({gpu['arch']}), which cannot run it",
                                  "Compile it for this GPU with --target cuda")
    if not can_run(arch):
        raise DeploytoolError(f"package {package.path} is built for {arch} and this "
                              f"{platform.machine()} machine cannot run it",
                              "Benchmark it on a matching machine, or compile it with "
                              "--target cpu")
    if arch != platform.machine():
        raise DeploytoolError(f"package {package.path} is built for {arch}: here it would run "
                              f"only under emulation, whose timings say nothing about a {arch} "
                              "machine", f"Run deploytool bench on a {arch} machine")
    missing = sorted(set(runtime.get("cpu_features") or []) - machine_cpu_flags())
    if missing:
        raise DeploytoolError(f"package {package.path} needs CPU features this machine lacks "
                              f"({' '.join(missing)})",
                              "Benchmark it on a machine that has them, or compile it for a "
                              "portable target such as x86_64-avx2")
    if not package.runner.is_file():
        raise DeploytoolError(f"package {package.path} has no {package.runner.name} runner",
                              "Compile the package again")
    return gpu


def _torchscript_model(package: Package, model: Path | None) -> Path:
    """The .pt file the package was compiled from: ``model``, or the path its manifest records."""
    source = package.manifest.get("model") or {}
    if source.get("format") != "torchscript":
        raise DeploytoolError(f"package {package.path} was compiled from {source.get('format')}, "
                              "not TorchScript, so there is no TorchScript model to compare",
                              "Drop torchscript from --compare")
    if model is None:
        recorded = compiled_model_file(package, "torchscript")
        if recorded is not None:
            return recorded
        raise DeploytoolError("--compare torchscript needs the TorchScript file the package was "
                              f"compiled from ({source.get('file')})",
                              "Pass it with --model MODEL.pt")
    if not model.is_file():
        raise DeploytoolError(f"model file {model} not found", "Check the --model path")
    if sha256_of(model) != source.get("sha256"):
        raise DeploytoolError(f"{model} is not the model {package.path} was compiled from (its "
                              "sha256 differs from the manifest's)",
                              f"Pass the {source.get('file')} the package was compiled from")
    return model


def _max_abs_diff(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    if len(ours) != len(reference):
        return math.inf
    worst = 0.0
    for a, b in zip(ours, reference, strict=True):
        if a.shape != b.shape:
            return math.inf
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def _run_round(backend: Backend, job: Job, settings, workdir: Path, label: str,
               outputs: bool) -> dict:
    json_path = workdir / f"{label}.json"
    output_dir = workdir / f"{label}-outputs" if outputs else None
    if output_dir:
        output_dir.mkdir()
    command, extra_env = backend.command(job, settings, json_path, output_dir)
    env = {**os.environ, **extra_env}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not json_path.is_file():
        raise _failed(f"the {backend.name} backend", proc, command)
    report = json.loads(json_path.read_text())
    if output_dir:
        runners = backend.name == PACKAGE or backend.name.startswith(OTHER_PACKAGE)
        names = ([npy_name(s.name) for s in job.package.outputs] if runners
                 else sorted((p.name for p in output_dir.glob("output*.npy")),
                             key=lambda n: int(n[6:-4])))
        report["outputs"] = [np.load(output_dir / n) for n in names]
    return report


def _failed(what: str, proc: subprocess.CompletedProcess, command: list[str]) -> DeploytoolError:
    """The error for a benchmark process that failed: its exit code and last line of output."""
    lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line]
    return DeploytoolError(f"{what} failed (exit {proc.returncode}: "
                           f"{lines[-1] if lines else 'no output'})",
                           f"Run it alone to see all its output: {' '.join(command)}")


def _combine(name: str, reports: list[dict]) -> BackendResult:
    latencies = [t for r in reports for t in r["latencies_ms"]]
    wall = sum(r["wall_s"] for r in reports)
    keys = ("device", "import_ms", "load_ms", "first_run_ms", "warmup_iters", "iterations",
            "wall_s", "stats", "peak_rss_kb")
    rounds = [{k: r[k] for k in keys if k in r} for r in reports]
    return BackendResult(
        name=name, threads=reports[0].get("threads"),
        load_ms=statistics.median(r["load_ms"] for r in reports),
        first_run_ms=statistics.median(r["first_run_ms"] for r in reports),
        stats=compute_stats(latencies, wall), peak_rss_kb=max(r["peak_rss_kb"] for r in reports),
        rss_before_load_kb=max(r["rss_before_load_kb"] for r in reports), rounds=rounds,
        latencies_ms=latencies, outputs=reports[0].get("outputs", []))


def bench_package(options: BenchOptions, log: Log | None = None) -> BenchResult:
    """Measure a package through its native runner, and the ``compare`` backends beside it.

    Every backend runs in a fresh process per round on the same seeded inputs (read from the
    same .npy files); rounds are interleaved, each starting with a different backend, so that
    drift of a shared machine hits all alike.

    Parameters
    ----------
    options : BenchOptions
    log : callable, optional
        Receives one line per round; None means silent.

    Returns
    -------
    BenchResult
        Also stored in the manifest's ``benchmarks`` slot (unless ``options.save`` is False) and
        written to ``options.json`` when given.
    """
    log = log or (lambda _line: None)
    options.check()
    package = load_package(options.package)
    device = resolve_device(package, options.device)
    if options.per_kernel and device != "cpu":
        raise UsageError("--per-kernel times the kernels of CPU packages only (a GPU runs them "
                         "asynchronously)", "Profile a GPU package with Nsight Systems: nsys "
                         f"profile {package.runner} {package.path}")
    gpu = check_runs_here(package, device)
    verify_files(package)  # a damaged package never runs
    for name in options.compare:
        module = _backend(name).python_module
        if module and importlib.util.find_spec(module) is None:
            raise DeploytoolError(f"--compare {name} needs the Python package {module}",
                                  f"Install it (pip install {module})")
    model = _torchscript_model(package, options.model) if "torchscript" in options.compare \
        else None
    for name in {"onnxruntime", "openvino", "openvino-bf16"} & set(options.compare):
        if not (package.path / "model.onnx").is_file():
            raise DeploytoolError(f"package {package.path} has no model.onnx for {name}",
                                  "Compile the TorchScript or ONNX form of the model")
    threads = options.resolved_threads()
    machine = {**machine_info(), **({"device": device, "gpu": gpu} if gpu else {})}
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    names = [PACKAGE, *options.compare]
    reports: dict[str, list[dict]] = {name: [] for name in names}
    schedule = []
    with tempfile.TemporaryDirectory(prefix="deploytool-bench-") as tmp:
        workdir = Path(tmp)
        arrays = sample_inputs(package.inputs, options.seed)
        inputs = []
        for i, (spec, array) in enumerate(zip(package.inputs, arrays, strict=True)):
            np.save(workdir / f"input{i}.npy", array)
            inputs.append((spec.name, workdir / f"input{i}.npy"))
        job = Job(package, model, inputs, threads, device)
        for r in range(options.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                label = re.sub(r"[^\w.-]", "_", name)  # package:PATH names a file too
                report = _run_round(_backend(name), job, options.round_settings(), workdir,
                                    f"{label}-{r}", outputs=r == 0)
                reports[name].append(report)
                schedule.append(f"{r + 1}:{name}")
                log(f"  round {r + 1}/{options.rounds}  {name:<12} p50 "
                    f"{format_ms(report['stats']['p50_ms']):>10}  ({report['iterations']} runs)")
        kernels = profile_kernels(job, workdir) if options.per_kernel else None
    results = [_combine(name, reports[name]) for name in names]
    for result in results[1:]:
        result.max_abs_diff = _max_abs_diff(result.outputs, results[0].outputs)
    result = BenchResult(options, date, machine, threads, results, schedule, arrays, kernels)
    if options.save:
        package.manifest["benchmarks"] = result.to_dict()
        try:
            package.save_manifest()
            result.stored = True
        except ReadOnlyPackage as err:
            log(f"note: {err}")
    if options.json:
        write_json(options.json, result.to_dict(latencies=True))
    return result


def profile_kernels(job: Job, workdir: Path) -> list[dict]:
    """Each kernel's time inside the model, from the package's runner (``--profile``: the VM
    times every kernel call over at least 10 runs and 1 s, in a process of its own after the
    rounds). One entry per kernel, slowest first: its name, calls per run, and the medians of
    its calls added up (``ms``)."""
    path = workdir / "profile.txt"
    command, env = _runner_command(job)
    command += ["--profile", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0 or not path.is_file():
        raise _failed("the per-kernel profile", proc, command)
    kernels: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        us, _runs, name = line.split(" ", 2)
        kernel = kernels.setdefault(name, {"kernel": name, "calls": 0, "ms": 0.0})
        kernel["calls"] += 1
        kernel["ms"] += float(us) / 1000
    return sorted(kernels.values(), key=lambda k: -k["ms"])


def format_kernels(result: BenchResult) -> str:
    """--per-kernel's table: each kernel's time in the model and its share of all of them."""
    kernels = result.kernels or []
    total = sum(k["ms"] for k in kernels)
    width = max([len("kernel"), *(len(k["kernel"]) for k in kernels)])
    lines = [f"{'kernel':<{width}}  calls  {'time':>10}  share"]
    lines += [f"{k['kernel']:<{width}}  {k['calls']:>5}  {format_ms(k['ms']):>10}  "
              f"{k['ms'] / total:6.1%}" for k in kernels]
    return "\n".join([
        *lines, "",
        "per kernel inside the model: each call's median over runs timed kernel by kernel, "
        f"added up per kernel; together {format_ms(total)}, against the package's p50 of "
        f"{format_ms(result.get(PACKAGE).stats.p50_ms)} (timed one by one, kernels of a few "
        "microseconds wait longer for the threads)"])


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically."""
    scratch = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(scratch, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            scratch.unlink(missing_ok=True)
        raise DeploytoolError(f"cannot write {path} ({os.strerror(err.errno or 0)})",
                              "Pass a writable --json path") from err


def format_ms(ms: float) -> str:
    """A latency with a unit that suits it: 8.1 us, 17.52 ms, 1.86 s."""
    if ms < 1:
        return f"{ms * 1000:.1f} us"
    if ms < 1000:
        return f"{ms:.2f} ms"
    return f"{ms / 1000:.2f} s"


def format_table(result: BenchResult) -> str:
    """The results as a text table, one row per backend, with each one's ratio to the package."""
    header = ("backend", "load", "first run", "min", "mean", "p50", "p90", "p99", "max",
              "runs/s", "peak RSS", "p50 vs package", "max |diff|")
    rows = [header]
    for b in result.backends:
        s = b.stats
        diff = "-" if b.max_abs_diff is None else f"{b.max_abs_diff:.2g}"
        rows.append((b.name, format_ms(b.load_ms), format_ms(b.first_run_ms),
                     *(format_ms(v) for v in (s.min_ms, s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms,
                                              s.max_ms)),
                     f"{s.throughput_per_s:.1f}", f"{b.peak_rss_kb / 1024:.1f} MiB",
                     f"{result.ratio(b.name):.2f}x", diff))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    m = result.machine
    gpu = f"{m['device']} {m['gpu']['name']} (driver {m['gpu']['driver']}), " if "gpu" in m else ""
    counts = ", ".join(f"{b.name} {b.stats.iterations}" for b in result.backends)
    return "\n".join([*lines, "",
                      f"{gpu}{m['cpu']} ({m['cores']} cores, load {m['load_average_1min']}), "
                      f"{result.threads} threads, {result.date}",
                      f"timed runs: {counts}; load and first run: median over "
                      f"{result.options.rounds} fresh processes",
                      "p50 vs package: p50 latency / package p50 (lower is faster); max |diff|: "
                      "outputs against the package's on the same inputs"])
