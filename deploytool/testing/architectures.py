"""Public architectures in plain torch (random weights, no torchvision), for the speed zoo."""

from __future__ import annotations

from collections.abc import Callable

from ..tensors import TensorSpec
from .zoo import _calibrated, mobilenet_v2, resnet18

IMAGE = [TensorSpec("image", (1, 3, 224, 224))]


def _divisible(value: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: ``value`` rounded to a multiple of ``divisor``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def small_cnn():
    """A small CNN at 64x64: 3x3 convolutions to 12 and 24 channels (the second strided), a 1x1
    one to 40 channels at 32x32, global average pooling and a 10-way classifier."""
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, 1, 1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 40, 1), nn.BatchNorm2d(40), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10))
    return _calibrated(model, [TensorSpec("image", (1, 3, 64, 64))])


def resnet50(num_classes: int = 1000):
    """ResNet-50 (torchvision's architecture: bottlenecks, stride in the 3x3 convolution)."""
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(), nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.down(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return _calibrated(nn.Sequential(*layers), IMAGE)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act=None) -> list:
    from torch import nn

    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


def _squeeze_excite(channels: int, squeezed: int, act, gate):
    """Squeeze-and-excitation: global mean, two 1x1 convolutions, a gate scaling the input."""
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self):
            super().__init__()
            self.reduce = nn.Conv2d(channels, squeezed, 1)
            self.act = act()
            self.expand = nn.Conv2d(squeezed, channels, 1)
            self.gate = gate()

        def forward(self, x):
            scale = x.mean((2, 3), keepdim=True)
            return x * self.gate(self.expand(self.act(self.reduce(scale))))

    return SqueezeExcite()


def _inverted(cin: int, expanded: int, cout: int, kernel: int, stride: int, se, act):
    """An inverted residual (MBConv): 1x1 expansion, depthwise, optional SE, 1x1 projection."""
    from torch import nn

    class Inverted(nn.Module):
        def __init__(self):
            super().__init__()
            layers = _conv_bn(cin, expanded, 1, act=act) if expanded != cin else []
            layers += _conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act)
            if se is not None:
                layers.append(se)
            layers += _conv_bn(expanded, cout, 1)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    return Inverted()


def efficientnet_b0(num_classes: int = 1000):
    """EfficientNet-B0: MBConv blocks with squeeze-and-excitation and SiLU (swish)."""
    from torch import nn

    layers = _conv_bn(3, 32, 3, 2, act=nn.SiLU)
    cin = 32
    for expand, kernel, stride, cout, repeats in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2),
                                                 (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                                                 (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                                                 (6, 3, 1, 320, 1)):
        for i in range(repeats):
            expanded = cin * expand
            se = _squeeze_excite(expanded, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
            layers.append(_inverted(cin, expanded, cout, kernel, stride if i == 0 else 1, se,
                                    nn.SiLU))
            cin = cout
    layers += _conv_bn(cin, 1280, 1, act=nn.SiLU)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
               nn.Linear(1280, num_classes)]
    return _calibrated(nn.Sequential(*layers), IMAGE)


def mobilenet_v3_large(num_classes: int = 1000):
    """MobileNetV3-Large: inverted residuals with hard-swish, ReLU, and hard-sigmoid SE."""
    from torch import nn

    layers = _conv_bn(3, 16, 3, 2, act=nn.Hardswish)
    cin = 16
    for kernel, expanded, cout, use_se, hard, stride in (
            (3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2),
            (3, 72, 24, False, False, 1), (5, 72, 40, True, False, 2),
            (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
            (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1),
            (3, 184, 80, False, True, 1), (3, 184, 80, False, True, 1),
            (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
            (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1),
            (5, 960, 160, True, True, 1)):
        act = nn.Hardswish if hard else nn.ReLU
        se = (_squeeze_excite(expanded, _divisible(expanded // 4), nn.ReLU, nn.Hardsigmoid)
              if use_se else None)
        layers.append(_inverted(cin, expanded, cout, kernel, stride, se, act))
        cin = cout
    layers += _conv_bn(cin, 960, 1, act=nn.Hardswish)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(960, 1280), nn.Hardswish(),
               nn.Dropout(0.2), nn.Linear(1280, num_classes)]
    return _calibrated(nn.Sequential(*layers), IMAGE)


def regnet_y_400mf(num_classes: int = 1000):
    """RegNetY-400MF: grouped 3x3 bottlenecks (group width 8) with squeeze-and-excitation."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(
                *_conv_bn(cin, cout, 1, act=nn.ReLU),
                *_conv_bn(cout, cout, 3, stride, groups=cout // 8, act=nn.ReLU),
                _squeeze_excite(cout, int(round(0.25 * cin)), nn.ReLU, nn.Sigmoid),
                *_conv_bn(cout, cout, 1))
            self.down = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.down(x))

    layers = _conv_bn(3, 32, 3, 2, act=nn.ReLU)
    cin = 32
    for width, depth in ((48, 1), (104, 3), (208, 6), (440, 6)):
        for i in range(depth):
            layers.append(Block(cin, width, 2 if i == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return _calibrated(nn.Sequential(*layers), IMAGE)


def convnext_tiny(num_classes: int = 1000):
    """ConvNeXt-Tiny: 7x7 depthwise convolutions, LayerNorm over channels, GELU MLPs, layer
    scale; 4x4 patchify stem and 2x2 downsampling."""
    import torch
    from torch import nn
    from torch.nn import functional

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            y = functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                                      self.bias, self.eps)
            return y.permute(0, 3, 1, 2)

    class Block(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.scale = nn.Parameter(torch.full((dim,), 0.5))

        def forward(self, x):
            y = self.dwconv(x).permute(0, 2, 3, 1)
            y = self.mlp(self.norm(y)) * self.scale
            return x + y.permute(0, 3, 1, 2)

    dims = (96, 192, 384, 768)
    layers = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
    for stage, (dim, depth) in enumerate(zip(dims, (3, 3, 9, 3), strict=True)):
        if stage:
            layers += [LayerNorm2d(dims[stage - 1], eps=1e-6),
                       nn.Conv2d(dims[stage - 1], dim, 2, 2)]
        layers += [Block(dim) for _ in range(depth)]
    layers += [nn.AdaptiveAvgPool2d(1), LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(),
               nn.Linear(dims[-1], num_classes)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return model.eval(), IMAGE


def squeezenet1_1(num_classes: int = 1000):
    """SqueezeNet 1.1: fire modules (1x1 squeeze, 1x1 and 3x3 expand, concatenated)."""
    import torch
    from torch import nn

    class Fire(nn.Module):
        def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU())

        def forward(self, x):
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
        Fire(512, 64, 256, 256), nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return _calibrated(model, IMAGE)


def shufflenet_block(channels: int = 116, size: int = 28, groups: int = 2):
    """A ShuffleNetV2 unit: split, 1x1 / depthwise 3x3 / 1x1 on one half, concatenate and
    shuffle the channels (reshape, transpose, reshape)."""
    import torch
    from torch import nn

    half = channels // 2

    class Unit(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch = nn.Sequential(*_conv_bn(half, half, 1, act=nn.ReLU),
                                        *_conv_bn(half, half, 3, groups=half),
                                        *_conv_bn(half, half, 1, act=nn.ReLU))
            self.groups = groups

        def forward(self, x):
            a, b = x.chunk(2, dim=1)
            y = torch.cat([a, self.branch(b)], 1)
            n, c, h, w = y.shape
            y = y.view(n, self.groups, c // self.groups, h, w).transpose(1, 2)
            return y.reshape(n, c, h, w)

    return _calibrated(nn.Sequential(Unit(), Unit()),
                       [TensorSpec("image", (1, channels, size, size))])


def _encoder_layer(hidden: int, heads: int, intermediate: int, pre_norm: bool):
    """A Transformer encoder layer written out (matmul, softmax, LayerNorm, GELU), without
    nn.MultiheadAttention: pre-norm as in ViT, post-norm as in BERT."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads, self.size = heads, hidden // heads
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, hidden)
            self.norm1 = nn.LayerNorm(hidden, eps=1e-12)
            self.norm2 = nn.LayerNorm(hidden, eps=1e-12)
            self.up = nn.Linear(hidden, intermediate)
            self.act = nn.GELU()
            self.down = nn.Linear(intermediate, hidden)
            self.pre_norm = pre_norm

        def split(self, x):
            n, t, _ = x.shape
            return x.view(n, t, self.heads, self.size).transpose(1, 2)

        def attention(self, x):
            q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (self.size ** 0.5)
            context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
            return self.out(context.reshape(x.shape[0], x.shape[1], -1))

        def forward(self, x):
            if self.pre_norm:
                x = x + self.attention(self.norm1(x))
                return x + self.down(self.act(self.up(self.norm2(x))))
            x = self.norm1(x + self.attention(x))
            return self.norm2(x + self.down(self.act(self.up(x))))

    return Layer()


def vit(hidden: int = 256, layers: int = 4, heads: int = 4, size: int = 224, patch: int = 16,
        num_classes: int = 1000):
    """A ViT image classifier (Hugging Face ViTForImageClassification's layout, small): patch
    embedding, class token, pre-norm encoder layers, the class token's classifier."""
    import torch
    from torch import nn

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            tokens = (size // patch) ** 2 + 1
            self.embed = nn.Conv2d(3, hidden, patch, patch)
            self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.position = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
            self.layers = nn.Sequential(*[_encoder_layer(hidden, heads, 4 * hidden, True)
                                          for _ in range(layers)])
            self.norm = nn.LayerNorm(hidden, eps=1e-12)
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, image):
            x = self.embed(image).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.position
            return self.head(self.norm(self.layers(x))[:, 0])

    torch.manual_seed(0)
    return ViT().eval(), IMAGE


def bert(hidden: int = 256, layers: int = 4, heads: int = 4, tokens: int = 128,
         vocab: int = 30522, num_classes: int = 2):
    """A BERT sequence classifier (Hugging Face BertForSequenceClassification's layout, small):
    word, position and token-type embeddings, post-norm encoder layers, a tanh pooler."""
    import torch
    from torch import nn

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(vocab, hidden)
            self.position = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
            self.token_type = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.norm = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.Sequential(*[_encoder_layer(hidden, heads, 4 * hidden, False)
                                          for _ in range(layers)])
            self.pooler = nn.Linear(hidden, hidden)
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, input_ids):
            x = self.norm(self.words(input_ids) + self.position + self.token_type)
            x = self.layers(x)
            return self.head(torch.tanh(self.pooler(x[:, 0])))

    torch.manual_seed(0)
    return Bert().eval(), [TensorSpec("input_ids", (1, tokens), "int64")]


ARCHITECTURES: dict[str, Callable] = {
    "small_cnn": small_cnn, "resnet18": resnet18, "mobilenet_v2": mobilenet_v2,
    "resnet50": resnet50, "efficientnet_b0": efficientnet_b0,
    "mobilenet_v3_large": mobilenet_v3_large, "convnext_tiny": convnext_tiny,
    "regnet_y_400mf": regnet_y_400mf, "squeezenet1_1": squeezenet1_1, "vit": vit, "bert": bert,
    "shufflenet_block": shufflenet_block,
}
