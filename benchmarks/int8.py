"""make bench-int8: int8 packages of make bench's models beside their float32 packages and
ONNX Runtime and OpenVINO on the same quantized model, one interleaved run per model; prints
the Markdown table of benchmarks/RESULTS.md's int8 section."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's deploytool, however it is installed

from deploytool.bench.timing import BenchOptions, bench_package, format_ms, machine_info  # noqa: E402
from deploytool.compiler import CompileOptions, compile_model  # noqa: E402
from deploytool.testing.coverage import source_commit  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2", "hf_bert_medium", "hf_vit_medium", "tv_regnet_x_400mf")
PEERS = ("onnxruntime", "openvino") if importlib.util.find_spec("openvino") else ("onnxruntime",)


def _package(model: Path, output: Path, precision: str) -> Path:
    """The package of ``model`` at ``output``, compiled unless make bench left it there."""
    if precision == "fp32" and (output / "manifest.json").is_file():
        return output
    compile_model(CompileOptions(model=model, output=output, force=True, java=False,
                                 precision=precision, allow_mismatch=True), log=print)
    return output


def _row(name: str, work: Path, rounds: int) -> str:
    model = work / f"{name}.pt"
    if not model.is_file():
        sys.exit(f"{model} not found: run make bench first (it writes the models there)")
    fp32 = _package(model, work / name, "fp32")
    int8 = _package(model, work / f"{name}-int8", "int8")
    other = f"package:{fp32}"
    result = bench_package(BenchOptions(package=int8, compare=(*PEERS, other), rounds=rounds,
                                        min_iters=20, min_seconds=2, save=False), log=print)
    p50 = {b.name: b.stats.p50_ms for b in result.backends}
    ratio = {n: f"{format_ms(v)} ({v / p50['package']:.2f}x)" for n, v in p50.items()}
    manifest = json.loads((int8 / "manifest.json").read_text())
    agreements = {(a["output"], a["reference"]): a for a in manifest["validation"]["agreements"]}
    first = manifest["outputs"][0]["name"]
    fp32_agreement, peer = agreements[(first, "fp32")], agreements[(first, "onnxruntime-int8")]
    top1 = "-" if fp32_agreement["top1"] is None else f"{fp32_agreement['top1']:.0%}"
    cells = [f"`{name}`", format_ms(p50["package"]), ratio[other],
             *(ratio[p] for p in PEERS), f"{fp32_agreement['cosine']:.4f}", top1,
             f"{peer['cosine']:.4f}", manifest["validation"]["status"],
             str(manifest["precision"]["integer_products"])]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    machine = machine_info()
    rows = [_row(name, args.work, args.rounds) for name in args.models.split(",")]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    peers = " | ".join(f"{p} int8 p50" for p in PEERS)
    print(f"\nMachine: {machine['cpu']}, {machine['cores']} cores, load "
          f"{machine['load_average_1min']} at the start; {date}, commit {source_commit()}.\n")
    print(f"| model | int8 package p50 | fp32 package p50 | {peers} | cosine vs fp32 | "
          "top-1 vs fp32 | cosine vs ONNX Runtime int8 | validation | integer products |")
    print("| --- " * (9 + len(PEERS) - 1) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
