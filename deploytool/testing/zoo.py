"""Model zoo built in code (no downloads), for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DeploytoolError
from ..tensors import TensorSpec
from .examples import cnn, mlp, save_torchscript


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


# -- The public zoo: torchvision, Hugging Face and timm architectures, built from their code with
# random weights (nothing is downloaded) at small input sizes, to keep compiles short.


def _norms_calibrated(model, inputs: list[TensorSpec], batches: int = 2):
    """Set every batch norm's statistics from random batches, as training would; identity
    statistics make a deep random network's output ignore its input, and validation vacuous."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        for module in norms:
            module.momentum = None  # cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(*[torch.randn(2, *s.shape[1:]) for s in inputs])
    return model.eval(), inputs


def _torchvision():
    from .torchvision_compat import import_torchvision

    return import_torchvision()


def _image(size: int, name: str = "x", frames: int | None = None) -> list[TensorSpec]:
    shape = (1, 3, frames, size, size) if frames else (1, 3, size, size)
    return [TensorSpec(name, shape)]


def tv_classifier(arch: str, size: int = 64, num_classes: int = 10, **kwargs):
    """A torchvision classification model (``torchvision.models.<arch>``, random weights)."""
    builder = getattr(_torchvision().models, arch)
    return _norms_calibrated(builder(weights=None, num_classes=num_classes, **kwargs),
                             _image(size))


def tv_vit(size: int = 32):
    """torchvision's VisionTransformer (vit_b_16's code) in a small configuration."""
    VisionTransformer = _torchvision().models.vision_transformer.VisionTransformer
    model = VisionTransformer(image_size=size, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=32, mlp_dim=64, num_classes=10)
    model.heads.head.reset_parameters()  # torchvision zeroes the head: all outputs would be 0
    return model.eval(), _image(size)


def tv_swin(size: int = 64):
    """torchvision's SwinTransformer (swin_t's code) in a small configuration."""
    SwinTransformer = _torchvision().models.swin_transformer.SwinTransformer
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                            window_size=[4, 4], num_classes=10)
    return model.eval(), _image(size)


def tv_segmentation(arch: str, size: int = 64, num_classes: int = 5, **kwargs):
    """A torchvision segmentation model; it returns a dict ({"out": ..., "aux": ...})."""
    builder = getattr(_torchvision().models.segmentation, arch)
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    return _norms_calibrated(model, _image(size))


def tv_video(arch: str = "r3d_18", size: int = 32, frames: int = 4, num_classes: int = 10):
    """A torchvision video classifier on a short clip (N, C, T, H, W)."""
    builder = getattr(_torchvision().models.video, arch)
    return _norms_calibrated(builder(weights=None, num_classes=num_classes),
                             _image(size, frames=frames))


def _transformers():
    _torchvision()  # transformers imports torchvision when it is installed
    import transformers

    return transformers


def _hf_config(cls, return_dict: bool = False, **kwargs):
    return cls(torchscript=True, return_dict=return_dict, **kwargs)


def hf_bert(seq: int = 8):
    """Hugging Face BertModel, 2 layers of width 32 (outputs: hidden states, pooled)."""
    hf = _transformers()

    config = _hf_config(hf.BertConfig, vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    return hf.BertModel(config).eval(), [TensorSpec("input_ids", (1, seq), "int64")]


def hf_distilbert(seq: int = 8):
    """Hugging Face DistilBertModel, 2 layers of width 32."""
    hf = _transformers()

    config = _hf_config(hf.DistilBertConfig, vocab_size=100, dim=32, n_layers=2, n_heads=2,
                        hidden_dim=64, max_position_embeddings=64)
    return hf.DistilBertModel(config).eval(), [TensorSpec("input_ids", (1, seq), "int64")]


def hf_gpt2(seq: int = 8):
    """Hugging Face GPT2Model, 2 layers of width 32, no cache: the hidden states."""
    hf = _transformers()

    config = _hf_config(hf.GPT2Config, vocab_size=100, n_embd=32, n_layer=2, n_head=2,
                        n_positions=64, use_cache=False)
    return hf.GPT2Model(config).eval(), [TensorSpec("input_ids", (1, seq), "int64")]


def hf_vit(size: int = 32):
    """Hugging Face ViTModel, 2 layers of width 32 on 32x32 images."""
    hf = _transformers()

    config = _hf_config(hf.ViTConfig, image_size=size, patch_size=8, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return hf.ViTModel(config).eval(), [TensorSpec("pixel_values", (1, 3, size, size))]


def hf_t5(seq: int = 8):
    """Hugging Face T5ForConditionalGeneration (encoder-decoder), 2+2 layers of width 32, no
    cache, called with input_ids and decoder_input_ids: the decoder's logits (T5 in transformers
    5 needs return_dict=True inside; the wrapper returns the logits tensor)."""
    from torch import nn
    hf = _transformers()

    config = _hf_config(hf.T5Config, return_dict=True, vocab_size=100, d_model=32, d_kv=16, d_ff=64,
                        num_layers=2, num_heads=2, use_cache=False)

    class T5(nn.Module):  # forward(input_ids, decoder_input_ids): T5's third and first argument
        def __init__(self):
            super().__init__()
            self.t5 = hf.T5ForConditionalGeneration(config)

        def forward(self, input_ids, decoder_input_ids):
            return self.t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits

    return T5().eval(), [TensorSpec("input_ids", (1, seq), "int64"),
                         TensorSpec("decoder_input_ids", (1, seq), "int64")]


def timm_model(arch: str, size: int = 64, num_classes: int = 10, **kwargs):
    """A timm model (``timm.create_model(arch)``, random weights)."""
    _torchvision()  # before timm, which imports torchvision
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    return _norms_calibrated(model, _image(size))


def _bind(function, *args, **kwargs):
    def build(**more):
        return function(*args, **{**kwargs, **more})

    build.__doc__ = function.__doc__
    return build


PUBLIC_ZOO: dict[str, Callable] = {
    **{f"tv_{arch}": _bind(tv_classifier, arch) for arch in (
        "resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
        "convnext_tiny", "squeezenet1_1", "shufflenet_v2_x0_5", "densenet121", "mnasnet0_5")},
    "tv_googlenet": _bind(tv_classifier, "googlenet", aux_logits=False, init_weights=True),
    "tv_inception_v3": _bind(tv_classifier, "inception_v3", size=75, aux_logits=False,
                             init_weights=True),
    "tv_vit": tv_vit,
    "tv_swin": tv_swin,
    "tv_deeplabv3": _bind(tv_segmentation, "deeplabv3_mobilenet_v3_large", aux_loss=True),
    "tv_lraspp": _bind(tv_segmentation, "lraspp_mobilenet_v3_large"),
    "tv_fcn": _bind(tv_segmentation, "fcn_resnet50", size=32, aux_loss=True),
    "tv_r3d_18": _bind(tv_video, "r3d_18"),
    "hf_bert": hf_bert,
    "hf_distilbert": hf_distilbert,
    "hf_gpt2": hf_gpt2,
    "hf_vit": hf_vit,
    "hf_t5": hf_t5,
    "timm_resnet10t": _bind(timm_model, "resnet10t"),
    "timm_vit_tiny": _bind(timm_model, "vit_tiny_patch16_224", size=32, img_size=32,
                           patch_size=8),
}
# Traced twins of scripted torchvision models whose traced TorchScript takes another path (a
# traced Swin's shape arithmetic, a traced ViT's fused attention kernel, ShuffleNetV2's shuffle).
TRACED_TWINS = {f"{name}_traced": PUBLIC_ZOO[name]
                for name in ("tv_swin", "tv_vit", "tv_shufflenet_v2_x0_5")}
PUBLIC_ZOO.update(TRACED_TWINS)
# How each public model is saved as TorchScript: scripted, or traced where torch.jit.script
# cannot compile the model's Python (Hugging Face and timm models are written for tracing).
TRACED = {name for name in PUBLIC_ZOO
          if name.startswith(("hf_", "timm_")) or name in TRACED_TWINS}



def hf_model(config: str, model: str, inputs: tuple[str, ...] = ("input_ids",), seq: int = 8,
             **kwargs):
    """A Hugging Face model built from ``transformers.<config>(**kwargs)``, random weights,
    taking int64 token inputs of length ``seq``."""
    hf = _transformers()

    built = getattr(hf, model)(_hf_config(getattr(hf, config), **kwargs)).eval()
    return built, [TensorSpec(name, (1, seq), "int64") for name in inputs]


_SMALL_HF = {"vocab_size": 100, "max_position_embeddings": 64}


def hf_bart(seq: int = 8):
    """Hugging Face BartModel (encoder-decoder), 1+1 layers of width 32, called with input_ids
    and decoder_input_ids (its first and third argument): the decoder's hidden states."""
    from torch import nn
    hf = _transformers()

    config = _hf_config(hf.BartConfig, return_dict=True, d_model=32, encoder_layers=1,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, use_cache=False, **_SMALL_HF)

    class Bart(nn.Module):
        def __init__(self):
            super().__init__()
            self.bart = hf.BartModel(config)

        def forward(self, input_ids, decoder_input_ids):
            return self.bart(input_ids=input_ids,
                             decoder_input_ids=decoder_input_ids).last_hidden_state

    return Bart().eval(), [TensorSpec("input_ids", (1, seq), "int64"),
                           TensorSpec("decoder_input_ids", (1, seq), "int64")]
# Members of the public zoo's families that the tests never build: ``make zoo-family`` checks
# that the routes generalise beyond the models they were developed on.
FAMILY_ZOO: dict[str, Callable] = {
    **{f"tv_{arch}": _bind(tv_classifier, arch, **kwargs) for arch, kwargs in (
        ("alexnet", {}), ("vgg11_bn", {"size": 32}), ("resnext50_32x4d", {"size": 32}),
        ("mobilenet_v3_large", {}), ("efficientnet_v2_s", {}), ("regnet_y_400mf", {}),
        ("shufflenet_v2_x1_0", {}))},
    "tv_r2plus1d_18": _bind(tv_video, "r2plus1d_18"),
    "tv_deeplabv3_resnet50": _bind(tv_segmentation, "deeplabv3_resnet50", size=32),
    "hf_roberta": _bind(hf_model, "RobertaConfig", "RobertaModel", hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        **_SMALL_HF),
    "hf_albert": _bind(hf_model, "AlbertConfig", "AlbertModel", embedding_size=16,
                       hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, **_SMALL_HF),
    "hf_llama": _bind(hf_model, "LlamaConfig", "LlamaModel", hidden_size=32,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, use_cache=False, **_SMALL_HF),
    "hf_bart": hf_bart,
    "timm_convnext_atto": _bind(timm_model, "convnext_atto"),
    "timm_mobilevit_xxs": _bind(timm_model, "mobilevit_xxs"),
    "timm_deit_tiny": _bind(timm_model, "deit_tiny_patch16_224", size=32, img_size=32,
                            patch_size=8),
    "timm_regnety_002": _bind(timm_model, "regnety_002"),
}
TRACED |= {name for name in FAMILY_ZOO if name.startswith(("hf_", "timm_"))}

ZOO: dict[str, Callable] = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18,
                            "mobilenet_v2": mobilenet_v2, "transformer": transformer,
                            "gru": gru, "lstm": lstm, "control_flow": control_flow,
                            "dynamic_loop": dynamic_loop, "two_io": two_io, **PUBLIC_ZOO,
                            **FAMILY_ZOO}


def build_zoo_model(name: str, seed: int = 0, **kwargs):
    """Build zoo model ``name`` with seeded random weights; returns ``(model, inputs)``."""
    import torch

    if name not in ZOO:
        raise DeploytoolError(f"unknown zoo model '{name}'", f"Use one of {', '.join(ZOO)}")
    torch.manual_seed(seed)
    model, inputs = ZOO[name](**kwargs)
    return model.eval(), named_after_forward(model, inputs)


def named_after_forward(model, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """``inputs`` renamed after ``model.forward``'s parameters (torchvision's LR-ASPP takes
    ``input`` where its other models take ``x``), as torch.export names them."""
    import inspect
    from dataclasses import replace

    parameters = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(parameters) < len(inputs):
        return inputs
    return [replace(spec, name=name) for spec, name in zip(inputs, parameters, strict=False)]


def save_zoo_torchscript(name: str, model, inputs: list[TensorSpec], path: Path) -> Path:
    """Save a zoo model as TorchScript: traced when it is in :data:`TRACED`, else scripted."""
    return save_torchscript(model, inputs, path, trace=name in TRACED)


def save_exported(model, inputs: list[TensorSpec], path: Path, seed: int = 0) -> Path:
    """``torch.export`` ``model`` on seeded sample inputs and save it to ``path`` (a .pt2)."""
    import torch

    from ..tensors import sample_inputs

    model.eval()
    args = tuple(torch.from_numpy(a) for a in sample_inputs(inputs, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(torch.export.export(model, args), str(path))
    return path
