"""An estimate of the bf16 packages' gain on a CPU whose vdpbf16ps runs at the rate of
vfmadd231ps (AMD Zen 4 and 5), measured on one where it does not (the Xeons with AMX, whose
vdpbf16ps takes four times as long): each bf16 package is built for x86_64-avx512-bf16 with every
vdpbf16ps replaced by a vfmadd231ps of the same registers (sums meaningless here; the same
loads, tiles, epilogues and kernels), and its convolution and matrix-product kernels are timed
against those of the float32 package for x86_64-avx512, as make bench-bf16 times them. Prints a
Markdown table.

    python benchmarks/bf16_rate.py --work build/bench   # after make bench
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's deploytool, however it is installed
sys.path.insert(0, str(ROOT / "benchmarks"))

from precision import MODELS, _product_ms  # noqa: E402

from deploytool.bench.timing import machine_info  # noqa: E402
from deploytool.compiler import CompileOptions, compile_model  # noqa: E402
from deploytool.schedules import dot_products  # noqa: E402
from deploytool.testing.coverage import source_commit  # noqa: E402

# vfmadd231ps of the pairs read as floats: the pipes vdpbf16ps takes on Zen 4 and 5. A pair of a
# zero and a value reads as a denormal, which costs a microcode assist: the packages' runners run
# with denormals read and written as zeros (DAZ, FTZ, set by a preloaded library), else
# the products of ResNet-18 and SqueezeNet (ReLU's zeros) ran 25-50x slower.
INSTEAD = """declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
define internal <16 x float> @dp_instead(<16 x float> %acc, <32 x bfloat> %x,
                                        <32 x bfloat> %y) alwaysinline {
  %a = bitcast <32 x bfloat> %x to <16 x float>
  %b = bitcast <32 x bfloat> %y to <16 x float>
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %b, <16 x float> %acc)
  ret <16 x float> %r
}
"""
DENORMALS_AS_ZERO = ("#include <xmmintrin.h>\n__attribute__((constructor)) "
                     "static void daz(void) { _mm_setcsr(_mm_getcsr() | 0x8040); }\n")


def _dot_instead() -> None:
    """Make the bf16 tiles call vfmadd231ps where they call vdpbf16ps."""
    ir = dot_products.BF16_LLVM_IR
    call = f"@{dot_products.BF16.llvm}(<16 x float> %acc"
    if call not in ir:
        sys.exit("dot_products.BF16_LLVM_IR no longer calls vdpbf16ps as this script expects")
    dot_products.BF16_LLVM_IR = INSTEAD + ir.replace(call, "@dp_instead(<16 x float> %acc")


def _denormals_as_zero(scratch: Path) -> None:
    """Every process started from here on (the packages' runners) sets DAZ and FTZ first."""
    source, library = scratch / "daz.c", scratch / "libdaz.so"
    source.write_text(DENORMALS_AS_ZERO)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", source, "-o", library], check=True)
    os.environ["LD_PRELOAD"] = str(library)


def _build(model: Path, output: Path, target: str, precision: str) -> Path:
    compile_model(CompileOptions(model=model, output=output, target=target, force=True,
                                 java=False, precision=precision, validate=False),
                  log=lambda *_: None)
    return output


def _gain(name: str, work: Path, rounds: int, threads: int | None) -> tuple[float, float]:
    """Milliseconds of the model's float32 and bf16 product kernels (see the module)."""
    model = work / f"{name}.pt"
    if not model.is_file():
        sys.exit(f"{model} not found: run make bench first (it writes the models there)")
    fp32 = _build(model, work / f"{name}-avx512", "x86_64-avx512", "fp32")
    bf16 = _build(model, work / f"{name}-bf16-at-fma-rate", "x86_64-avx512-bf16", "bf16")
    before, after = _product_ms((fp32, bf16), rounds, threads)
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated (default: make bench-bf16's)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="of each package [default: every core]")
    args = parser.parse_args()
    _dot_instead()
    rows, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="bf16-rate-") as scratch:
        _denormals_as_zero(Path(scratch))
        for name in args.models.split(",") if args.models else MODELS["bf16"]:
            before, after = _gain(name, args.work, args.rounds, args.threads)
            ratios.append(before / after)
            rows.append(f"| `{name}` | {before:.2f} ms | {after:.2f} ms | {before / after:.2f}x |")
    machine = machine_info()
    threads = args.threads or machine["cores"]
    print(f"\nMachine: {machine['cpu']}, {machine['cores']} cores, {threads} threads; "
          f"commit {source_commit()}.\n")
    print("| model | float32 conv and matmul kernels | bf16, vdpbf16ps at vfmadd's rate | gain |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"\nGeometric mean of the gains: {geomean:.2f}x over {len(ratios)} models.")


if __name__ == "__main__":
    main()
