"""make bench-int8 / make bench-bf16: reduced-precision packages of make bench's models beside
their float32 packages and the peers' same precision (ONNX Runtime and OpenVINO on the QDQ model
for int8, OpenVINO's bf16 hint for bf16), one interleaved run per model; for bf16 also the
convolution and matrix-product kernels of both packages, timed one by one inside the model (the
fastest of --rounds profiles of each, alternating). Prints the Markdown
table of benchmarks/RESULTS.md's section of that precision."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's deploytool, however it is installed

from deploytool.bench.timing import BenchOptions, bench_package, format_ms, machine_info  # noqa: E402
from deploytool.compiler import CompileOptions, compile_model  # noqa: E402
from deploytool.testing.coverage import source_commit  # noqa: E402

MODELS = {
    "int8": ("resnet18", "mobilenet_v2", "hf_bert_medium", "hf_vit_medium", "tv_regnet_x_400mf"),
    "bf16": ("resnet18", "mobilenet_v2", "hf_bert_medium", "hf_vit_medium", "tv_convnext_tiny",
             "tv_efficientnet_b0", "tv_squeezenet1_1", "tv_regnet_x_400mf"),
}
OPENVINO = importlib.util.find_spec("openvino") is not None
PEERS = {"int8": ("onnxruntime", "openvino") if OPENVINO else ("onnxruntime",),
         "bf16": ("openvino-bf16",) if OPENVINO else ()}
PRODUCTS = {"int8": "integer_products", "bf16": "bf16_products"}
PRODUCT_KERNELS = ("conv2d", "matmul")  # in a kernel's name: a convolution or matrix product


def _package(model: Path, output: Path, precision: str) -> Path:
    """The package of ``model`` at ``output``, compiled unless make bench left it there."""
    if precision == "fp32" and (output / "manifest.json").is_file():
        return output
    compile_model(CompileOptions(model=model, output=output, force=True, java=False,
                                 precision=precision, allow_mismatch=True), log=print)
    return output


def _product_ms(packages: tuple[Path, ...], profiles: int,
                threads: int | None = None) -> list[float]:
    """Milliseconds of each package's convolution and matrix-product kernels, timed one by one:
    ``profiles`` profiles of each, the packages alternating, and each kernel's fastest. On the
    2-core guest a kernel's time moves with the process (MobileNetV2's depthwise ones took about
    30 us in some, 90 us in others, the same package), more than the packages differ."""
    fastest: list[dict[str, float]] = [{} for _ in packages]
    for _ in range(profiles):
        for package, kernels in zip(packages, fastest, strict=True):
            result = bench_package(BenchOptions(package=package, rounds=1, per_kernel=True,
                                                save=False, min_seconds=1, threads=threads),
                                   log=print)
            for k in result.kernels:
                if any(p in k["kernel"] for p in PRODUCT_KERNELS):
                    kernels[k["kernel"]] = min(k["ms"], kernels.get(k["kernel"], math.inf))
    return [sum(kernels.values()) for kernels in fastest]


def _row(name: str, work: Path, rounds: int, precision: str) -> str:
    model = work / f"{name}.pt"
    if not model.is_file():
        sys.exit(f"{model} not found: run make bench first (it writes the models there)")
    fp32 = _package(model, work / name, "fp32")
    reduced = _package(model, work / f"{name}-{precision}", precision)
    other = f"package:{fp32}"
    result = bench_package(BenchOptions(package=reduced, compare=(*PEERS[precision], other),
                                        rounds=rounds, min_iters=20, min_seconds=2, save=False),
                           log=print)
    p50 = {b.name: b.stats.p50_ms for b in result.backends}
    ratio = {n: f"{format_ms(v)} ({v / p50['package']:.2f}x)" for n, v in p50.items()}
    manifest = json.loads((reduced / "manifest.json").read_text())
    agreements = {(a["output"], a["reference"]): a for a in manifest["validation"]["agreements"]}
    first = manifest["outputs"][0]["name"]
    fp32_agreement = agreements[(first, "fp32")]
    # the peer execution it was held to (int8: ONNX Runtime optimized or as the graph reads)
    peer = next((a for (output, label), a in agreements.items()
                 if output == first and label != "fp32"), None)
    top1 = "-" if fp32_agreement["top1"] is None else f"{fp32_agreement['top1']:.0%}"
    cells = [f"`{name}`", format_ms(p50["package"]), ratio[other],
             *(ratio[p] for p in PEERS[precision])]
    if precision == "bf16":
        before, after = _product_ms((fp32, reduced), rounds)
        cells.append(f"{before:.2f} -> {after:.2f} ms ({before / after:.2f}x)")
    cells += [f"{fp32_agreement['cosine']:.4f}", top1,
              "-" if peer is None else f"{peer['cosine']:.4f}", manifest["validation"]["status"],
              str(manifest["precision"][PRODUCTS[precision]])]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precision", choices=sorted(MODELS), default="int8")
    parser.add_argument("--models", help="comma-separated (default: the precision's list)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    precision = args.precision
    models = args.models.split(",") if args.models else MODELS[precision]
    machine = machine_info()
    rows = [_row(name, args.work, args.rounds, precision) for name in models]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    peers = [f"{p} p50" for p in PEERS[precision]]
    kernels = ["conv and matmul kernels, fp32 -> bf16"] if precision == "bf16" else []
    header = [f"{precision} package p50", "fp32 package p50", *peers, *kernels,
              "cosine vs fp32", "top-1 vs fp32", "cosine vs its peer",
              "validation", PRODUCTS[precision].replace("_", " ")]
    print(f"\nMachine: {machine['cpu']}, {machine['cores']} cores, load "
          f"{machine['load_average_1min']} at the start; {date}, commit {source_commit()}.\n")
    print("| model | " + " | ".join(header) + " |")
    print("| --- " * (len(header) + 1) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
