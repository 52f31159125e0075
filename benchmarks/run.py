"""make bench: compile the model zoo for cpu, measure each package beside ONNX Runtime and
TorchScript with `deploytool bench`, and write the Markdown table to benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's deploytool, however it is installed

from deploytool.bench.timing import (  # noqa: E402
    BenchOptions,
    BenchResult,
    bench_package,
    format_ms,
    machine_info,
)
from deploytool.errors import DeploytoolError  # noqa: E402
from deploytool.tensors import TensorSpec  # noqa: E402
from deploytool.testing.coverage import source_commit  # noqa: E402
from deploytool.testing.zoo import TRACED, ZOO  # noqa: E402

# The peers every model is timed beside; OpenVINO where it is installed (pip install openvino).
PEERS = ("onnxruntime", "openvino", "torchscript") if importlib.util.find_spec("openvino") \
    else ("onnxruntime", "torchscript")
LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torchscript": "TorchScript"}
GPU_SECTION = "\n## GPU"  # measured on another machine (benchmarks/gpu.py run), kept as it is


def transformer_encoder():
    """A small Transformer encoder: 2 layers, d_model 128, 4 heads, 32 tokens."""
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, x):
            return self.encoder(x)

    return Encoder(), [TensorSpec("tokens", (1, 32, 128))]


def hf_bert_medium():
    """Hugging Face BertModel at a deployed size: 4 layers of width 256, 128 tokens."""
    from deploytool.testing.zoo import _hf_config, _transformers

    hf = _transformers()
    config = _hf_config(hf.BertConfig, vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024)
    return hf.BertModel(config).eval(), [TensorSpec("input_ids", (1, 128), "int64")]


def hf_vit_medium():
    """Hugging Face ViTModel at a deployed size: 4 layers of width 256, 224x224 images."""
    from deploytool.testing.zoo import _hf_config, _transformers

    hf = _transformers()
    config = _hf_config(hf.ViTConfig, image_size=224, patch_size=16, hidden_size=256,
                        num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    return hf.ViTModel(config).eval(), [TensorSpec("pixel_values", (1, 3, 224, 224))]


@dataclass(frozen=True)
class Case:
    """A model of the suite and how long to measure it (untuned big models take seconds a run)."""

    name: str
    build: Callable
    warmup_ms: float = 200
    min_iters: int = 50
    min_seconds: float = 3


CASES = [
    Case("mlp", ZOO["mlp"]),
    Case("cnn", ZOO["cnn"]),
    Case("resnet18", ZOO["resnet18"], warmup_ms=0, min_iters=6),
    Case("mobilenet_v2", ZOO["mobilenet_v2"], min_iters=15),
    Case("transformer", transformer_encoder),
    # The public zoo's CNN families (depthwise + squeeze-and-excite + swish, grouped
    # convolutions, 7x7 depthwise + LayerNorm, fire modules, channel shuffles, odd channel
    # counts, small images) and transformers (Hugging Face, timm), at the zoo's sizes.
    *(Case(name, ZOO[name], min_iters=20) for name in (
        "tv_efficientnet_b0", "tv_mobilenet_v3_small", "tv_mnasnet0_5", "tv_regnet_x_400mf",
        "tv_convnext_tiny", "tv_squeezenet1_1", "tv_shufflenet_v2_x0_5", "tv_densenet121",
        "tv_googlenet", "tv_inception_v3",
        "timm_resnet10t", "hf_vit", "hf_bert", "hf_distilbert", "timm_vit_tiny")),
    # The zoo's transformers are small enough for tests; these are sized as deployed ones.
    Case("hf_bert_medium", hf_bert_medium, min_iters=10),
    Case("hf_vit_medium", hf_vit_medium, min_iters=10),
]


@dataclass
class Row:
    case: Case
    inputs: str
    compile_s: float | None = None
    tuning: str = "none"
    result: BenchResult | None = None
    error: str | None = None


def run_case(case: Case, work: Path, threads: int | None, rounds: int, scale: float) -> Row:
    import torch

    from deploytool.compiler import CompileOptions, compile_model
    from deploytool.testing.examples import save_torchscript

    torch.manual_seed(0)
    module, inputs = case.build()
    row = Row(case, ", ".join(map(str, inputs)))
    model = save_torchscript(module, inputs, work / f"{case.name}.pt",
                             trace=case.name in TRACED or case.name.startswith("hf_"))
    print(f"\n== {case.name}: compile for cpu", flush=True)
    try:
        package = compile_model(CompileOptions(model=model, output=work / case.name, force=True,
                                               java=False), log=print)
    except DeploytoolError as err:
        row.error = f"does not compile: {err}"
        print(f"  {row.error}")
        return row
    # load, export, import, build, package (the validation that follows is not compiling)
    row.compile_s = sum(seconds for stage, seconds in package.manifest["stage_seconds"].items()
                        if stage != "validate")
    tuning = package.manifest.get("tuning") or {}
    if tuning.get("from_database"):
        row.tuning = f"{tuning['from_database']}/{tuning['tasks']} kernels from the database"
    elif tuning.get("default"):
        row.tuning = "default schedules"
    # ONNX Runtime and OpenVINO run the package's model.onnx; a re-traced model has none.
    peers = PEERS if (package.path / "model.onnx").is_file() else ("torchscript",)
    options = BenchOptions(package=package.path, model=model,
                           compare=peers, warmup_ms=case.warmup_ms,
                           min_iters=max(1, round(case.min_iters * scale)),
                           min_seconds=case.min_seconds * scale, threads=threads, rounds=rounds)
    print(f"== {case.name}: bench\n{options.display()}", flush=True)
    try:
        row.result = bench_package(options, log=lambda line: print(line, flush=True))
    except DeploytoolError as err:  # a peer that cannot run the model: time the others
        failed = [p for p in peers if f"the {p} backend failed" in str(err)]
        if not failed:
            raise
        print(f"  {failed[0]} left out: {err}", flush=True)
        options = replace(options, compare=tuple(p for p in peers if p != failed[0]))
        row.result = bench_package(options, log=lambda line: print(line, flush=True))
    return row


def geometric_means(rows: list[Row]) -> str:
    """One line: each peer's geometric mean ratio over the models measured."""
    import math

    measured = [row.result for row in rows if row.result is not None]
    if not measured:
        return "No model was measured."

    def mean(peer: str) -> str:
        ratios = [r.ratio(peer) for r in measured if _has(r, peer)]
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
        return f"{LABELS[peer]} {geomean:.2f}x over {len(ratios)}"

    return ("Geometric mean of the ratios (models measured): " + ", ".join(map(mean, PEERS))
            + " (above 1: the package is faster).")


def _has(result: BenchResult, backend: str) -> bool:
    return any(b.name == backend for b in result.backends)


def _mib(kb: int) -> str:
    return f"{kb / 1024:.0f} MiB"


def _openvino_version() -> str:
    if "openvino" not in PEERS:
        return ""
    import openvino

    return f"OpenVINO {openvino.__version__.split('-')[0]} (CPU plugin, f32, latency mode), "


def render(rows: list[Row], machine: dict, threads: int, end_load: float,
           note: str | None) -> str:
    import onnxruntime
    import torch
    import tvm

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks: package vs " + " vs ".join(LABELS[p] for p in PEERS),
        "",
        f"Machine: {machine['cpu']}, {machine['arch']}, {machine['cores']} cores "
        f"({machine['usable_cpus']} usable), {threads} thread{'s' if threads != 1 else ''} for "
        "every backend. "
        f"Load average {machine['load_average_1min']} at the start, {end_load:.2f} at the end. "
        f"{date}, commit {source_commit()}.",
        f"Versions: TVM {tvm.__version__}, ONNX Runtime {onnxruntime.__version__}, "
        f"{_openvino_version()}torch {torch.__version__}. Batch 1, float32, target `cpu`.",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "Compile: the load, export, import, build and package stages (the native runtime build "
        "is cached between models; validation not included). "
        "Latency is the p50 of the timed runs; the ratio is the backend's p50 over the package's "
        "(the package is 1.00x; below 1 the backend is faster). Memory is the peak resident set "
        "(VmHWM) of the process that ran the backend. A dash: the backend could not run the "
        "model (a re-traced model has no model.onnx for ONNX Runtime and OpenVINO; OpenVINO "
        "failed to convert it).",
        "",
        "| model | input | compile | tuning | package p50 | "
        + " | ".join(f"{LABELS[p]} p50" for p in PEERS) + " | package peak RSS | "
        + " | ".join(f"{LABELS[p]} peak RSS" for p in PEERS) + " |",
        "| --- " * (5 + 2 * len(PEERS) + 1) + "|",
    ]
    for row in rows:
        name = f"`{row.case.name}`"
        if row.result is None:
            lines.append(f"| {name} | {row.inputs} | {row.error} |" + " |" * (3 + 2 * len(PEERS)))
            continue
        r = row.result
        cells = [format_ms(r.get("package").stats.p50_ms)]
        for other in PEERS:
            cells.append(f"{format_ms(r.get(other).stats.p50_ms)} ({r.ratio(other):.2f}x)"
                         if _has(r, other) else "-")
        memory = [_mib(r.get(n).peak_rss_kb) if _has(r, n) else "-" for n in ("package", *PEERS)]
        lines.append(f"| {name} | {row.inputs} | {row.compile_s:.1f} s | {row.tuning} | "
                     + " | ".join(cells + memory) + " |")
    lines += ["", geometric_means(rows)]
    lines += ["", "## Every figure", "",
              "First inference: the model load, then its first run, each the median over the "
              "rounds' fresh processes. Peak RSS in brackets: the process before loading (for "
              "ONNX Runtime and TorchScript, the Python interpreter with numpy, before importing "
              "the library). max \\|diff\\|: the largest difference of the outputs from the "
              "package's, on the same inputs.", ""]
    for row in rows:
        if row.result is None:
            continue
        r = row.result
        o = r.options
        lines += [f"### {row.case.name}", "",
                  f"{o.rounds} interleaved rounds, each a fresh process per backend: warm-up "
                  f"{o.warmup_ms:g} ms, then at least {o.round_settings()[1]} runs and "
                  f"{o.round_settings()[2]:g} s (`--warmup-ms {o.warmup_ms:g} --min-iters "
                  f"{o.min_iters} --min-seconds {o.min_seconds:g}`).", "",
                  "| backend | load | first run | min | mean | p50 | p90 | p99 | max | runs/s "
                  "| timed runs | peak RSS | ratio | max \\|diff\\| |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
                  "| --- |"]
        for b in r.backends:
            s = b.stats
            diff = "-" if b.max_abs_diff is None else f"{b.max_abs_diff:.1g}"
            times = [format_ms(v) for v in (b.load_ms, b.first_run_ms, s.min_ms, s.mean_ms,
                                            s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms)]
            lines.append(f"| {b.name} | " + " | ".join(times) + f" | {s.throughput_per_s:.1f} | "
                         f"{s.iterations} | {_mib(b.peak_rss_kb)} ({_mib(b.rss_before_load_kb)})"
                         f" | {r.ratio(b.name):.2f}x | {diff} |")
        lines.append("")
    lines += ["## Reproduce", "",
              "    make bench            # or: python benchmarks/run.py [--models mlp,cnn] "
              "[--threads N]", "",
              "It compiles each model into build/bench/, runs `deploytool bench` on it with "
              f"`--compare {','.join(PEERS)}` and the settings above, and rewrites this file "
              "up to its GPU section.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(c.name for c in CASES),
                        help="comma-separated, of: %(default)s, or any other zoo model "
                             "(deploytool/testing/zoo.py)")
    parser.add_argument("--threads", type=int, help="default: the CPUs usable")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every case's min-iters and min-seconds (quick runs: 0.2)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--note", help="a paragraph to add under the machine line")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - {c.name for c in CASES} - set(ZOO))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}")
    cases = [c for c in CASES if c.name in names]
    cases += [Case(n, ZOO[n], min_iters=20) for n in names if n not in {c.name for c in CASES}]
    args.work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    rows = [run_case(c, args.work, args.threads, args.rounds, args.scale) for c in cases]
    threads = args.threads or machine["usable_cpus"]
    text = render(rows, machine, threads, os.getloadavg()[0], args.note)
    if args.output.is_file() and GPU_SECTION in args.output.read_text():  # from benchmarks/gpu.py
        text += GPU_SECTION + args.output.read_text().split(GPU_SECTION, 1)[1]
    scratch = args.output.with_name(f".{args.output.name}.tmp")
    scratch.write_text(text)
    os.replace(scratch, args.output)
    print(f"\n{text}\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
