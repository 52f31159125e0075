"""Model zoo built in code (no downloads), for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..tensors import TensorSpec
from .examples import cnn, mlp


def _calibrated(model, inputs: list[TensorSpec]):
    """He-initialise the convolutions and set the batch-norm statistics from random batches, as
    training would. With PyTorch's default init and identity statistics, a deep random network's
    output ignores its input (MobileNetV2's varied by 1e-9), which would make validation vacuous."""
    import torch
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, *inputs[0].shape[1:]))
    return model.eval(), inputs


def resnet18(num_classes: int = 1000, size: int = 224):
    """ResNet-18 in plain torch (the torchvision architecture, random weights)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + self.down(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return _calibrated(nn.Sequential(*layers), [TensorSpec("image", (1, 3, size, size))])


def mobilenet_v2(num_classes: int = 1000, size: int = 224):
    """MobileNetV2 in plain torch (the torchvision architecture, width 1.0, random weights)."""
    from torch import nn

    def conv_bn(cin, cout, kernel, stride, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6()] if act else layers

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn(hidden, cout, 1, 1, act=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers = conv_bn(3, 32, 3, 2)
    cin = 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                          (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                          (6, 320, 1, 1)):
        for i in range(repeats):
            layers.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += conv_bn(cin, 1280, 1, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, num_classes)]
    return _calibrated(nn.Sequential(*layers), [TensorSpec("image", (1, 3, size, size))])


def transformer(vocab: int = 100, width: int = 32, heads: int = 4, layers: int = 2,
                seq: int = 8, num_classes: int = 5):
    """A text classifier: token embeddings, nn.TransformerEncoder (batch_first), mean pooling.

    Its input is int64 token ids. Scripted, it does not export to ONNX (the encoder's fast path
    calls ``aten::is_autocast_enabled``); through ``torch.export`` (.pt2) it compiles.
    """
    import torch
    from torch import nn

    class TextClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.position = nn.Parameter(torch.randn(1, seq, width) * 0.1)
            layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width,
                                               dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(width, num_classes)

        def forward(self, tokens):
            x = self.embed(tokens) + self.position
            return self.head(self.encoder(x).mean(dim=1))

    return TextClassifier(), [TensorSpec("tokens", (1, seq), "int64")]


def _recurrent(cell: str, features: int, hidden: int, seq: int, layers: int,
               bidirectional: bool, num_classes: int):
    from torch import nn

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, cell)(features, hidden, layers, batch_first=True,
                                         bidirectional=bidirectional)
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(y[:, -1])

    return Recurrent(), [TensorSpec("x", (1, seq, features))]


def gru(features: int = 8, hidden: int = 16, seq: int = 6, layers: int = 2,
        num_classes: int = 4):
    """nn.GRU (two layers, batch_first) and a linear head on the last step."""
    return _recurrent("GRU", features, hidden, seq, layers, False, num_classes)


def lstm(features: int = 8, hidden: int = 16, seq: int = 6, layers: int = 1,
         num_classes: int = 4):
    """nn.LSTM (bidirectional, batch_first) and a linear head on the last step."""
    return _recurrent("LSTM", features, hidden, seq, layers, True, num_classes)


def control_flow(width: int = 16):
    """Scripted data-dependent ``if`` and a fixed-count loop (the exporter unrolls it)."""
    import torch
    from torch import nn

    class ControlFlow(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(width, width)
            self.outer = nn.Linear(width, 3)

        def forward(self, x):
            if bool(x.sum() > 0):
                y = torch.relu(self.inner(x))
            else:
                y = torch.tanh(self.inner(x)) * 2.0
            for _ in range(3):
                y = torch.sigmoid(self.inner(y)) + x
            return self.outer(y)

    return ControlFlow(), [TensorSpec("x", (1, width))]


def dynamic_loop(width: int = 16):
    """A scripted ``while`` loop whose trip count depends on the data: ONNX ``Loop``."""
    from torch import nn

    class DynamicLoop(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(width, width)

        def forward(self, x):
            y = self.linear(x)
            steps = 0
            while bool(y.abs().sum() > 1.0) and steps < 8:
                y = y * 0.5
                steps += 1
            return y

    return DynamicLoop(), [TensorSpec("x", (1, width))]


def two_io(features: int = 8, extra: int = 6, width: int = 16, num_classes: int = 4):
    """Two inputs (features, and a float side input) and two outputs (probabilities, score)."""
    import torch
    from torch import nn

    class TwoInTwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(features, width)
            self.b = nn.Linear(extra, width)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x, side):
            h = torch.relu(self.a(x)) * torch.sigmoid(self.b(side))
            return torch.softmax(self.head(h), dim=-1), h.sum(dim=-1, keepdim=True)

    return TwoInTwoOut(), [TensorSpec("x", (2, features)), TensorSpec("side", (2, extra))]


ZOO: dict[str, Callable] = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18,
                            "mobilenet_v2": mobilenet_v2, "transformer": transformer,
                            "gru": gru, "lstm": lstm, "control_flow": control_flow,
                            "dynamic_loop": dynamic_loop, "two_io": two_io}


def save_exported(model, inputs: list[TensorSpec], path: Path, seed: int = 0) -> Path:
    """``torch.export`` ``model`` on seeded sample inputs and save it to ``path`` (a .pt2)."""
    import torch

    from ..tensors import sample_inputs

    model.eval()
    args = tuple(torch.from_numpy(a) for a in sample_inputs(inputs, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(torch.export.export(model, args), str(path))
    return path
