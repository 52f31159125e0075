"""CUDA packages on a GPU machine that has no TVM: compile here, check and time there.

    python benchmarks/gpu.py prepare DIR [--arch sm_90]   # here (TVM, nvcc; no GPU needed)
    python benchmarks/gpu.py run DIR [--json OUT.json]    # on the GPU machine (torch, no TVM)

``prepare`` compiles the zoo (MLP, CNN, ResNet-18, MobileNetV2) for the GPU's architecture into
DIR/<model>, beside DIR/<model>.pt, and the packages the `gpu` tests use into DIR/tests
(``DEPLOYTOOL_CUDA_PACKAGES=DIR/tests pytest -m gpu tests/test_cuda.py`` there).
``--ternary`` gives every convolution and linear weight three values (-s, 0, s) so that DIR
compresses to a few MB for carrying; the kernels, and so the timings, are the same.

``run`` checks each package on the GPU (its self-test, then ``deploytool validate``: the package
on the GPU against ONNX Runtime and TorchScript on the CPU) and times it beside PyTorch eager on
the same GPU (``deploytool bench --compare torchscript``, and ONNX Runtime's CUDA provider when
installed), then prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's deploytool, however it is installed

from deploytool.bench.timing import BenchOptions, bench_package, format_ms  # noqa: E402
from deploytool.errors import DeploytoolError  # noqa: E402

MODELS = ("mlp", "cnn", "resnet18", "mobilenet_v2")
TEST_PACKAGES = (("mlp", "cuda"), ("cnn", "cuda"), ("cnn", "cuda-sm80"))  # see tests/test_cuda.py


def _ternary(model, inputs):
    """Weights of three values per layer, batch-norm statistics recalibrated (see the docstring)."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                w = module.weight
                scale = w.abs().mean()
                w.copy_(torch.sign(w) * (w.abs() > 0.5 * scale) * 1.5 * scale)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model.train()
        for _ in range(2):
            model(torch.randn(4, *inputs[0].shape[1:]))
    return model.eval()


def prepare(folder: Path, arch: str, ternary: bool) -> None:
    import torch

    from deploytool.compiler import CompileOptions, compile_model
    from deploytool.testing.examples import EXAMPLES, save_torchscript
    from deploytool.testing.zoo import ZOO

    target = f"cuda-sm{arch.removeprefix('sm_')}"
    jobs = [(folder, name, ZOO[name], target, name) for name in MODELS]
    jobs += [(folder / "tests", name, EXAMPLES[name], "cuda-sm80" if t == "cuda-sm80" else target,
              f"{name}-{t}") for name, t in TEST_PACKAGES]
    for where, name, build, target_name, package in jobs:
        model = where / f"{name}.pt"
        if not model.is_file():
            torch.manual_seed(0)
            module, inputs = build()
            if ternary and where == folder:
                module = _ternary(module, inputs)
            save_torchscript(module, inputs, model)
        print(f"== {package}: compile for {target_name}", flush=True)
        compile_model(CompileOptions(model=model, target=target_name, output=where / package,
                                     force=True, java=False), log=print)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploytool", *args], capture_output=True,
                          text=True, cwd=ROOT)


def run(folder: Path, json_path: Path | None, seconds: float) -> int:
    import onnxruntime

    compare = ("torchscript",)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        compare += ("onnxruntime",)
    rows, results, failed = [], {}, False
    for name in MODELS:
        package, model = folder / name, folder / f"{name}.pt"
        selftest = subprocess.run([str(package / "bin" / "deploytool-run"), "--self-test"],
                                  capture_output=True, text=True)
        validate = _cli("validate", str(package), "--model", str(model))
        checks = {"self-test": selftest.returncode == 0, "validate": validate.returncode == 0}
        print(f"== {name}\n{selftest.stdout}{selftest.stderr}{validate.stdout}{validate.stderr}",
              flush=True)
        failed |= not all(checks.values())
        try:
            result = bench_package(BenchOptions(package=package, model=model, compare=compare,
                                                min_seconds=seconds, rounds=3, save=False),
                                   log=lambda line: print(line, flush=True))
        except DeploytoolError as err:
            print(f"bench failed: {err}")
            try:  # the package alone, so that its own figures are not lost
                alone = bench_package(BenchOptions(package=package, min_seconds=seconds,
                                                   save=False))
                err = DeploytoolError(f"{err.what}; package alone: p50 "
                                      f"{format_ms(alone.get('package').stats.p50_ms)}")
            except DeploytoolError:
                pass
            print(f"bench failed: {err}")
            rows.append(f"| {name} | {' '.join(k for k, ok in checks.items() if ok)} | "
                        f"bench failed: {err.what} | | |")
            failed = True
            continue
        results[name] = {"checks": checks, "bench": result.to_dict()}
        cells = [format_ms(result.get("package").stats.p50_ms)]
        cells += [f"{format_ms(result.get(o).stats.p50_ms)} ({result.ratio(o):.2f}x)"
                  for o in compare]
        passed = ", ".join(f"{k} {'PASSED' if ok else 'FAILED'}" for k, ok in checks.items())
        diff = max(result.get(o).max_abs_diff for o in compare)
        rows.append(f"| {name} | {passed} | " + " | ".join(cells) + f" | {diff:.1g} |")
        gpu = result.machine["gpu"]
    header = ["| model | on the GPU | package p50 | "
              + " | ".join(f"{'PyTorch eager' if o == 'torchscript' else 'ONNX Runtime CUDA'} p50"
                           for o in compare) + " | max \\|diff\\| |",
              "| --- | --- | --- | " + " | ".join("---" for _ in compare) + " | --- |"]
    print("\n".join(header + rows))
    if results:
        print(f"\nGPU: {gpu['name']} ({gpu['arch']}), driver {gpu['driver']}")
    if json_path:
        json_path.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="compile here, for the GPU machine")
    p.add_argument("folder", type=Path)
    p.add_argument("--arch", default="sm_90", help="the GPU's architecture [%(default)s]")
    p.add_argument("--ternary", action="store_true", help="compressible weights (see above)")
    r = sub.add_parser("run", help="check and time on the GPU machine")
    r.add_argument("folder", type=Path)
    r.add_argument("--json", type=Path)
    r.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.folder, args.arch, args.ternary)
        return 0
    return run(args.folder, args.json, args.min_seconds)


if __name__ == "__main__":
    raise SystemExit(main())
