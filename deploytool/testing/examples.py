"""Built-in example models, saved as TorchScript with their input shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import DeploytoolError
from ..tensors import TensorSpec


def mlp():
    """The MLP of the TorchScript hybrid-programming tutorial: 512 -> 256 -> 128 -> 2."""
    from torch import nn

    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 2))
    return model, [TensorSpec("x", (1, 512))]


def cnn():
    """A small CNN: conv, batch norm, ReLU, pooling, linear, on 1x3x32x32 images."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is tested
        for module in model:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model, [TensorSpec("image", (1, 3, 32, 32))]


EXAMPLES: dict[str, Callable] = {"mlp": mlp, "cnn": cnn}


def save_torchscript(model, inputs: list[TensorSpec], path: Path, trace: bool = False) -> Path:
    """Script ``model`` (or trace it on seeded sample inputs) and save it with ``inputs.json`` in
    its extra files."""
    import torch

    from ..tensors import sample_inputs

    model.eval()
    if trace:
        args = tuple(torch.from_numpy(a) for a in sample_inputs(inputs))
        with torch.no_grad():
            scripted = torch.jit.trace(model, args, check_trace=False)
    else:
        scripted = torch.jit.script(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path),
                   _extra_files={"inputs.json": json.dumps([s.to_dict() for s in inputs])})
    return path


def write_example(name: str, path: Path, seed: int = 0) -> Path:
    """Build the example ``name`` with seeded weights and save it to ``path``."""
    import torch

    if name not in EXAMPLES:
        raise DeploytoolError(f"unknown example '{name}'", f"Use one of {', '.join(EXAMPLES)}")
    torch.manual_seed(seed)
    model, inputs = EXAMPLES[name]()
    return save_torchscript(model, inputs, path)
