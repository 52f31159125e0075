"""make bench-top1: top-1 agreement of reduced-precision packages with float32 on trained
classifiers. The zoo's random weights leave a classifier's scores nearly tied (their top-1 swaps
under any rounding), so this trains a small CNN (residual and depthwise convolutions, batch
norms, ReLU), torchvision's ResNet-18 and MobileNetV2 (10 classes) on a synthetic 10-class
image task, compiles each with ``--precision int8``
(calibrated on 32 training samples) and ``bf16`` where the CPU has it, and counts how often each
package picks fp32's class on held-out samples, beside ONNX Runtime on the int8 package's QDQ
model. Prints the Markdown table of benchmarks/RESULTS.md's section."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's deploytool, however it is installed

from deploytool.compiler import CompileOptions, compile_model  # noqa: E402
from deploytool.runtime.binding import load  # noqa: E402
from deploytool.tensors import TensorSpec  # noqa: E402
from deploytool.testing.coverage import source_commit  # noqa: E402
from deploytool.testing.examples import save_torchscript  # noqa: E402

CLASSES, SIZE = 10, 32


def _images(rng, prototypes, count: int):
    """``count`` images: a class's prototype, scaled and shifted at random, under noise."""
    labels = rng.integers(0, CLASSES, count)
    scale = rng.uniform(0.5, 1.5, (count, 1, 1, 1))
    noise = rng.standard_normal((count, 3, SIZE, SIZE))
    return (prototypes[labels] * scale + 1.5 * noise).astype("float32"), labels


def _network(name: str):
    from torch import nn

    if name != "cnn":
        from deploytool.testing.torchvision_compat import import_torchvision

        return getattr(import_torchvision().models, name)(num_classes=CLASSES)

    def block(channels):
        return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                             nn.BatchNorm2d(channels), nn.ReLU())

    class Residual(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.body = nn.Sequential(block(channels), block(channels))

        def forward(self, x):
            return x + self.body(x)

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        Residual(32),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
        nn.Conv2d(64, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, CLASSES))


def _trained(name: str, steps: int, rng, prototypes):
    """The network trained with Adam on fresh batches; its accuracy on 1000 new images."""
    import torch

    torch.manual_seed(0)
    model = _network(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        x, y = _images(rng, prototypes, 64)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x, y = _images(rng, prototypes, 1000)
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    return model, accuracy


def _onnxruntime_scores(path: Path, images) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: image[None]})[0] for image in images])


def _package_scores(path: Path, images) -> np.ndarray:
    model = load(path)
    return np.concatenate([next(iter(model.run([image[None]]).values())) for image in images])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "top1")
    parser.add_argument("--models", default="cnn,resnet18,mobilenet_v2")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [row for name in args.models.split(",")
            for row in _rows(name, args.work / name, args.steps, args.samples)]
    print(f"\nTrained {args.steps} steps of 64 images each; {args.samples} held-out images; "
          f"commit {source_commit()}.\n")
    print("| model | backend | top-1 agreement with fp32 | accuracy |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))


def _rows(name: str, work: Path, steps: int, samples: int) -> list[str]:
    import torch

    from deploytool.targets import machine_cpu_flags

    rng = np.random.default_rng(0)
    # smooth class prototypes: noise at 8x8, upsampled
    coarse = torch.from_numpy(rng.standard_normal((CLASSES, 3, 8, 8)).astype("float32"))
    prototypes = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear").numpy()
    model, _ = _trained(name, steps, rng, prototypes)
    source = save_torchscript(model, [TensorSpec("x", (1, 3, SIZE, SIZE), "float32")],
                              work / f"{name}.pt")
    calibration = work / "calibration"
    calibration.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(_images(rng, prototypes, 32)[0]):
        np.save(calibration / f"{i:03d}.npy", image[None])
    images, labels = _images(rng, prototypes, samples)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy().argmax(1)
    rows = [f"| `{name}` | fp32 (PyTorch) | 100% | {float((reference == labels).mean()):.1%} |"]
    precisions = ["int8"] + (["bf16"] if "avx512_bf16" in machine_cpu_flags() else [])
    for precision in precisions:
        package = work / precision
        compile_model(CompileOptions(model=source, output=package, force=True, java=False,
                                     precision=precision, calibrate=calibration
                                     if precision == "int8" else None), log=print)
        scores = {f"package ({precision})": _package_scores(package, images)}
        if precision == "int8":
            scores["ONNX Runtime (same QDQ model)"] = _onnxruntime_scores(
                package / "model.onnx", images)
        for backend, value in scores.items():
            agree = float((value.argmax(1) == reference).mean())
            accurate = float((value.argmax(1) == labels).mean())
            rows.append(f"| `{name}` | {backend} | {agree:.1%} | {accurate:.1%} |")
    return rows


if __name__ == "__main__":
    main()
