"""Tests of deploytool.bench, bench_worker, the runner's timing loop and `deploytool bench`."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import copy_package

from deploytool.bench import worker as bench_worker
from deploytool.bench.timing import (
    BenchOptions,
    bench_package,
    compute_stats,
    format_table,
    parse_compare,
)
from deploytool.cli import main
from deploytool.errors import DeploytoolError, UsageError

# A skewed series with a tail, as latencies have, and an odd length so ranks interpolate.
SERIES = [0.31, 0.29, 0.35, 0.30, 4.2, 0.33, 0.32, 0.30, 0.29, 0.36, 0.31, 1.1, 0.30, 0.34, 0.33]


# ---------------------------------------------------------------- statistics

def test_stats_of_one_to_hundred_match_their_definition():
    stats = compute_stats([float(v) for v in range(100, 0, -1)], wall_s=2.0)
    # Linear interpolation between closest ranks: rank q/100 * 99 of 1..100 is 1 + 0.99 q.
    assert (stats.min_ms, stats.max_ms, stats.mean_ms) == (1.0, 100.0, 50.5)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput_per_s == 50.0
    assert stats.iterations == 100


def test_stats_match_numpy_on_a_skewed_series():
    stats = compute_stats(SERIES)
    p50, p90, p99 = np.percentile(SERIES, [50, 90, 99])
    assert stats.p50_ms == pytest.approx(p50)
    assert stats.p90_ms == pytest.approx(p90)
    assert stats.p99_ms == pytest.approx(p99)
    assert stats.mean_ms == pytest.approx(np.mean(SERIES))
    assert (stats.min_ms, stats.max_ms) == (np.min(SERIES), np.max(SERIES))
    # Without a wall time, throughput is runs per second of summed latency.
    assert stats.throughput_per_s == pytest.approx(len(SERIES) / (np.sum(SERIES) / 1000))


def test_worker_percentile_matches_numpy():
    ordered = sorted(SERIES)
    for q in (0, 10, 50, 90, 99, 100):
        assert bench_worker._percentile(ordered, q) == pytest.approx(np.percentile(SERIES, q))


def test_stats_of_a_single_run():
    stats = compute_stats([2.5])
    assert stats.min_ms == stats.p50_ms == stats.p99_ms == stats.max_ms == 2.5


# ---------------------------------------------------------------- arguments

def test_parse_compare_accepts_known_backends_once():
    assert parse_compare("onnxruntime, TorchScript,onnxruntime") == ("onnxruntime", "torchscript")
    assert parse_compare("") == ()
    assert parse_compare("package") == ()


def test_parse_compare_names_the_known_backends():
    with pytest.raises(UsageError, match="unknown backend 'tensorrt'.*onnxruntime, torchscript"):
        parse_compare("onnxruntime,tensorrt")


@pytest.mark.parametrize("changes, message", [
    ({"min_iters": 0}, "--min-iters is 0: a benchmark needs at least one timed run"),
    ({"rounds": 0}, "--rounds is 0"),
    ({"threads": 0}, "--threads is 0"),
    ({"min_seconds": -1.0}, "--min-seconds is -1.0"),
    ({"warmup_ms": float("nan")}, "--warmup-ms is nan"),
    ({"model": Path("m.pt")}, "--model is only used by --compare torchscript"),
])
def test_options_refuse_settings_that_measure_nothing(changes, message):
    with pytest.raises(UsageError, match=message):
        BenchOptions(package=Path("p"), **changes).check()


def _fake_package(root: Path, runtime: dict | None = None, model: dict | None = None) -> Path:
    """A folder with a manifest and an (unrunnable) runner file: enough for the checks."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "deploytool-run").write_text("#!/bin/sh\nexit 3\n")
    (root / "model.so").write_bytes(b"not a library")
    manifest = {
        "files": {"model.so": hashlib.sha256(b"not a library").hexdigest()},
        "format_version": 1,
        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": [1, 2], "dtype": "float32"}],
        "runtime": runtime or {"arch": platform.machine(), "cpu_features": [], "device": "cpu"},
        "model": model or {"name": "m", "file": "m.pt", "format": "torchscript",
                           "sha256": "0" * 64},
        "compile_options": {"model": str(root / "missing.pt")},
        "benchmarks": None,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _cli(*args: str):
    return CliRunner().invoke(main, ["bench", *args])


def test_cli_refuses_zero_iterations(tmp_path):
    result = _cli(str(_fake_package(tmp_path / "p")), "--min-iters", "0")
    assert result.exit_code == 2
    assert result.output.startswith("Error: --min-iters is 0")
    assert "Pass --min-iters 1 or more" in result.output


def test_cli_refuses_an_unknown_backend(tmp_path):
    result = _cli(str(_fake_package(tmp_path / "p")), "--compare", "tflite")
    assert result.exit_code == 2
    assert "Error: unknown backend 'tflite' in --compare. Use onnxruntime, torchscript, openvino" \
        in result.output


def test_cli_refuses_a_package_for_missing_cpu_features(tmp_path):
    package = _fake_package(tmp_path / "p", runtime={
        "arch": platform.machine(), "cpu_features": ["avx2", "no_such_flag"], "device": "cpu"})
    result = _cli(str(package))
    assert result.exit_code == 1
    assert "needs CPU features this machine lacks (no_such_flag)" in result.output
    assert "x86_64-avx2" in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_a_package_for_another_architecture(tmp_path):
    package = _fake_package(tmp_path / "p", runtime={
        "arch": "sparc64", "cpu_features": [], "device": "cpu"})
    result = _cli(str(package))
    assert result.exit_code == 1
    assert f"is built for sparc64 and this {platform.machine()} machine cannot run it" \
        in result.output


def test_cli_refuses_to_time_an_emulated_package(tmp_path):
    foreign = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    package = _fake_package(tmp_path / "p", runtime={
        "arch": foreign, "cpu_features": [], "device": "cpu"})
    result = _cli(str(package))
    assert result.exit_code == 1
    # Refused whether or not qemu could run it here.
    assert f"is built for {foreign}" in result.output
    assert f"Run deploytool bench on a {foreign} machine" in result.output \
        or "cannot run it" in result.output


def test_cli_refuses_a_folder_that_is_not_a_package(tmp_path):
    result = _cli(str(tmp_path))
    assert result.exit_code == 1
    assert "is not a deploytool package" in result.output


def test_torchscript_needs_the_model_the_package_came_from(tmp_path):
    package = _fake_package(tmp_path / "p")
    result = _cli(str(package), "--compare", "torchscript")
    assert result.exit_code == 1
    assert "needs the TorchScript file the package was compiled from (m.pt)" in result.output
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the model")
    result = _cli(str(package), "--compare", "torchscript", "--model", str(other))
    assert result.exit_code == 1
    assert "is not the model" in result.output and "sha256 differs" in result.output


def test_torchscript_comparison_of_an_onnx_package_is_refused(tmp_path):
    package = _fake_package(tmp_path / "p", model={"name": "m", "file": "m.onnx",
                                                   "format": "onnx", "sha256": "0" * 64})
    with pytest.raises(DeploytoolError, match="compiled from onnx, not TorchScript"):
        bench_package(BenchOptions(package=package, compare=("torchscript",)))


def test_a_failing_runner_is_reported_with_its_command(tmp_path):
    package = _fake_package(tmp_path / "p")
    os.chmod(package / "bin" / "deploytool-run", 0o755)
    with pytest.raises(DeploytoolError, match=r"the package backend failed \(exit 3"):
        bench_package(BenchOptions(package=package, min_seconds=0, warmup_ms=0))
    assert json.loads((package / "manifest.json").read_text())["benchmarks"] is None


# ---------------------------------------------------------------- end to end

@pytest.fixture
def mlp_copy(mlp_package, mlp_pt, tmp_path):
    """A copy of the session's MLP package (bench writes its manifest) and its TorchScript file."""
    return copy_package(mlp_package.path, tmp_path / "mlp"), mlp_pt


@pytest.mark.slow
def test_runner_timing_loop_writes_its_latencies_and_stats(mlp_copy, tmp_path):
    package, _ = mlp_copy
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [str(package / "bin" / "deploytool-run"), "--threads", "1", "--warmup-ms", "20",
         "--min-iters", "200", "--min-seconds", "0.05", "--json", str(out)],
        capture_output=True, text=True, env={}, cwd=tmp_path)  # no Python environment at all
    assert proc.returncode == 0, proc.stderr
    assert "first run:" in proc.stdout and "latency ms: min" in proc.stdout
    report = json.loads(out.read_text())
    times = report["latencies_ms"]
    assert report["iterations"] == len(times) >= 200
    assert report["wall_s"] >= 0.05 and report["wall_s"] >= sum(times) / 1000 * 0.999
    assert report["threads"] == 1
    assert report["load_ms"] > 0 and report["first_run_ms"] > 0 and report["warmup_iters"] >= 1
    stats = report["stats"]
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    assert stats["p50_ms"] == pytest.approx(p50, rel=1e-5, abs=1e-6)
    assert stats["p90_ms"] == pytest.approx(p90, rel=1e-5, abs=1e-6)
    assert stats["p99_ms"] == pytest.approx(p99, rel=1e-5, abs=1e-6)
    assert stats["mean_ms"] == pytest.approx(np.mean(times), rel=1e-5)
    assert stats["min_ms"] == pytest.approx(min(times), abs=1e-6)
    assert stats["max_ms"] == pytest.approx(max(times), abs=1e-6)
    assert stats["throughput_per_s"] == pytest.approx(len(times) / report["wall_s"], rel=1e-4)
    assert 0 < report["rss_before_load_kb"] <= report["peak_rss_kb"] < 1024 * 1024


@pytest.mark.slow
def test_runner_refuses_zero_iterations(mlp_copy):
    package, _ = mlp_copy
    proc = subprocess.run([str(package / "bin" / "deploytool-run"), "--min-iters", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--min-iters needs a whole number from 1 to 10000000" in proc.stderr


@pytest.mark.slow
def test_compare_runs_every_backend_on_identical_inputs(mlp_copy, tmp_path):
    import torch

    package, model = mlp_copy
    out = tmp_path / "bench.json"
    options = BenchOptions(package=package, model=model,
                           compare=("onnxruntime", "torchscript"), warmup_ms=10, min_iters=6,
                           min_seconds=0, threads=1, rounds=2, json=out)
    result = bench_package(options)

    # The inputs the benchmark used, run here through TorchScript independently.
    module = torch.jit.load(str(model))
    with torch.no_grad():
        expected = module(*[torch.from_numpy(a) for a in result.inputs]).numpy()
    assert [b.name for b in result.backends] == ["package", "onnxruntime", "torchscript"]
    for backend in result.backends:
        assert len(backend.outputs) == 1
        np.testing.assert_allclose(backend.outputs[0], expected, rtol=1e-4, atol=1e-5)
        assert backend.stats.iterations >= 6 and backend.threads == 1
        assert backend.peak_rss_kb > 0 and backend.load_ms > 0 and backend.first_run_ms > 0
    # The outputs depend on the inputs, so agreeing outputs mean identical inputs.
    other = module(torch.from_numpy(result.inputs[0] + 0.5)).detach().numpy()
    assert np.abs(other - expected).max() > 1e-3
    for backend in result.backends[1:]:
        assert backend.max_abs_diff < 1e-4

    # Interleaved: each round starts with a different backend.
    assert result.schedule == ["1:package", "1:onnxruntime", "1:torchscript",
                               "2:onnxruntime", "2:torchscript", "2:package"]
    # Ratios are p50 over the package's p50; combined stats are over every round's runs.
    written = json.loads(out.read_text())
    for data in written["backends"].values():
        times = data["latencies_ms"]
        assert len(times) == sum(r["iterations"] for r in data["rounds"])
        assert data["stats"]["p50_ms"] == pytest.approx(np.percentile(times, 50))
        assert data["ratio_p50"] == pytest.approx(
            data["stats"]["p50_ms"] / written["backends"]["package"]["stats"]["p50_ms"])
    assert written["backends"]["package"]["ratio_p50"] == 1.0
    assert written["threads"] == 1 and written["machine"]["cores"] == os.cpu_count()

    stored = json.loads((package / "manifest.json").read_text())["benchmarks"]
    assert stored["date"] == result.date and stored["machine"]["cpu"]
    assert set(stored["backends"]) == {"package", "onnxruntime", "torchscript"}
    assert "latencies_ms" not in stored["backends"]["package"]
    table = format_table(result)
    assert "1.00x" in table and "onnxruntime" in table and "torchscript" in table


@pytest.mark.slow
def test_cli_bench_prints_the_table(mlp_copy, tmp_path):
    package, _ = mlp_copy
    result = _cli(str(package), "--min-iters", "3", "--min-seconds", "0", "--warmup-ms", "0",
                  "--rounds", "1", "--threads", "1", "--json", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    assert "round 1/1  package" in result.output
    row = [line for line in result.output.splitlines() if line.startswith("package ")][-1]
    assert row.split()[-2:] == ["1.00x", "-"]
    assert json.loads((tmp_path / "b.json").read_text())["backends"]["package"]["stats"]


@pytest.mark.slow
def test_per_kernel_profile_times_each_layer_inside_the_model(mlp_copy, tmp_path):
    package, _ = mlp_copy
    result = _cli(str(package), "--per-kernel", "--min-iters", "20", "--min-seconds", "0",
                  "--warmup-ms", "0", "--rounds", "1", "--threads", "1",
                  "--json", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    kernels = json.loads((tmp_path / "b.json").read_text())["kernels"]
    # The MLP's three Linear layers (512-256-128-2), each a fused matrix product run once a run.
    layers = [k for k in kernels if "matmul" in k["kernel"]]
    assert len(layers) == 3 and all(k["calls"] == 1 for k in layers), kernels
    assert [k["ms"] for k in kernels] == sorted((k["ms"] for k in kernels), reverse=True)
    # In milliseconds, as the whole run's p50: the 512x256 layer takes microseconds, and the
    # kernels together neither vanish against the run nor dwarf it.
    p50 = json.loads((tmp_path / "b.json").read_text())["backends"]["package"]["stats"]["p50_ms"]
    total = sum(k["ms"] for k in kernels)
    assert 0.2 * p50 < total < 20 * p50, (total, p50)
    assert all(k["ms"] > 0 for k in kernels)
    table = result.output[result.output.index("kernel  "):]
    assert all(k["kernel"] in table for k in kernels) and "share" in table


def test_per_kernel_profile_of_a_gpu_package_is_refused(tmp_path):
    package = _fake_package(tmp_path / "p", runtime={"arch": platform.machine(),
                                                     "cpu_features": [], "device": "cuda"})
    result = _cli(str(package), "--per-kernel")
    assert result.exit_code != 0
    assert "--per-kernel times the kernels of CPU packages only" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_openvino_runs_as_a_peer_on_the_same_inputs(mlp_copy):
    pytest.importorskip("openvino")
    package, _ = mlp_copy
    result = bench_package(BenchOptions(package=package, compare=("openvino",), warmup_ms=10,
                                        min_iters=6, min_seconds=0, threads=1, rounds=1))
    package_result, openvino = result.backends
    assert openvino.name == "openvino" and openvino.threads == 1
    assert openvino.stats.iterations >= 6 and openvino.peak_rss_kb > 0
    np.testing.assert_allclose(openvino.outputs[0], package_result.outputs[0], rtol=1e-4,
                               atol=1e-5)
    assert openvino.max_abs_diff < 1e-4


def _benchmark_script(name: str, monkeypatch):
    """benchmarks/NAME imported as a module for the test's duration (registered, as its
    dataclasses look themselves up; the changes it makes to sys.path undone)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / name
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec.loader.exec_module(module)
    return module


def test_bench_suite_geometric_means_skip_a_peer_that_could_not_run(monkeypatch):
    from types import SimpleNamespace

    suite = _benchmark_script("run.py", monkeypatch)

    def result(**ratios):
        backends = [SimpleNamespace(name=n) for n in ("package", *ratios)]
        return SimpleNamespace(backends=backends, ratio=lambda peer: ratios[peer])

    rows = [SimpleNamespace(result=result(onnxruntime=2.0, openvino=0.5, torchscript=4.0)),
            SimpleNamespace(result=result(onnxruntime=0.5, torchscript=1.0)),  # no OpenVINO
            SimpleNamespace(result=None)]  # did not compile
    line = suite.geometric_means(rows)
    assert "ONNX Runtime 1.00x over 2" in line and "TorchScript 2.00x over 2" in line
    if "openvino" in suite.PEERS:
        assert "OpenVINO 0.50x over 1" in line


@pytest.mark.slow
def test_compare_runs_another_package_of_the_model_in_the_same_rounds(mlp_copy, tmp_path):
    """package:PATH runs a second package (here a copy, so the same outputs) by its own runner,
    interleaved with the others; a folder that is no package is refused in one line."""
    package, _ = mlp_copy
    other = copy_package(package, tmp_path / "other")
    name = f"package:{other}"
    options = BenchOptions(package=package, compare=parse_compare(f"onnxruntime,{name}"),
                           warmup_ms=10, min_iters=4, min_seconds=0, threads=1, rounds=2,
                           save=False)
    result = bench_package(options)
    assert [b.name for b in result.backends] == ["package", "onnxruntime", name]
    assert result.backends[2].max_abs_diff == 0 and result.backends[2].stats.iterations >= 4
    assert result.schedule[3:] == ["2:onnxruntime", f"2:{name}", "2:package"]
    outcome = _cli(str(package), "--compare", f"package:{tmp_path}")
    assert outcome.exit_code != 0 and "not a deploytool package" in outcome.output


@pytest.mark.slow
def test_openvino_bf16_runs_with_its_bf16_hint(mlp_copy):
    """The bf16 peer runs the same model.onnx; where the CPU has AVX-512 BF16 its outputs carry
    bfloat16's rounding (the hint took effect), elsewhere OpenVINO computes f32."""
    pytest.importorskip("openvino")
    from deploytool.targets import machine_cpu_flags

    package, _ = mlp_copy
    result = bench_package(BenchOptions(package=package, compare=("openvino-bf16",),
                                        warmup_ms=10, min_iters=6, min_seconds=0, threads=1,
                                        rounds=1))
    package_result, openvino = result.backends
    assert openvino.name == "openvino-bf16" and openvino.stats.iterations >= 6
    scale = np.abs(package_result.outputs[0]).max()
    assert openvino.max_abs_diff < 0.05 * scale
    if "avx512_bf16" in machine_cpu_flags():
        assert openvino.max_abs_diff > 1e-5 * scale


def test_bf16_rate_estimate_calls_vfmadd_where_the_tiles_call_vdpbf16ps(monkeypatch):
    """benchmarks/bf16_rate.py's patch still applies to the bf16 tiles' LLVM function: the
    function calls its vfmadd231ps stand-in, and vdpbf16ps is only declared."""
    from deploytool.schedules import dot_products

    estimate = _benchmark_script("bf16_rate.py", monkeypatch)
    monkeypatch.setattr(dot_products, "BF16_LLVM_IR", dot_products.BF16_LLVM_IR)
    estimate._dot_instead()
    ir = dot_products.BF16_LLVM_IR
    vdpbf16ps = f"@{dot_products.BF16.llvm}("
    assert [line for line in ir.splitlines() if vdpbf16ps in line] == \
        [line for line in ir.splitlines() if line.startswith("declare") and vdpbf16ps in line]
    assert "call <16 x float> @dp_instead(<16 x float> %acc" in ir
    assert "call <16 x float> @llvm.fma.v16f32(" in ir
