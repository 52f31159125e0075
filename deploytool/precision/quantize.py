"""Static int8 quantization of an ONNX model with ONNX Runtime's tool, as its users run it."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..common import last_line
from ..errors import DeploytoolError
from .calibration import Calibration

# What is quantized, and how: the choices of ONNX Runtime's x86 guidance (QDQ format, unsigned
# activations per tensor, signed symmetric weights per output channel), for the operators whose
# integer kernels pay, and the activations the tool then removes (the product before them
# quantizes to their range: one requantization in its epilogue, not two); the others stay in
# float32 between a dequantize and a quantize.
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm", "Relu", "Clip"]


def activation_type(arch: str) -> str:
    """The 8-bit type of activations for a CPU: int8 on ARM, whose dot-product instruction
    (``sdot``) multiplies signed bytes by signed bytes, as ONNX Runtime's ARM guidance says
    (S8S8); uint8 elsewhere, as VNNI's ``vpdpbusd`` multiplies unsigned by signed bytes."""
    return "int8" if arch == "aarch64" else "uint8"


def scheme(activations: str = "uint8") -> dict:
    """What is quantized and how, for the manifest."""
    return {"format": "QDQ", "activations": f"{activations}, per tensor, asymmetric (min-max)",
            "weights": "int8, per output channel, symmetric", "operators": QUANTIZED_OPS}


def quantize_int8(proto, calibration: Calibration, activations: str = "uint8"):
    """``proto`` (an onnx.ModelProto) quantized to int8 QDQ form, its activation ranges
    calibrated on ``calibration``'s samples, its activations of type ``activations`` (uint8 or
    int8, see :func:`activation_type`).

    Returns
    -------
    onnx.ModelProto
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(calibration.samples)

        def get_next(self):
            return next(self.remaining, None)

    with tempfile.TemporaryDirectory(prefix="deploytool-int8-") as tmp:
        source, quantized = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        onnx.save(own_weights(constants_as_initializers(proto)), source)
        # its advice to pre-process goes to the root logger: ONNX export already folds what
        # the pre-processing would (batch norms into convolutions, constants)
        logging.disable(logging.WARNING)
        try:
            quantize_static(source, quantized, Samples(), quant_format=QuantFormat.QDQ,
                            per_channel=True,
                            activation_type={"uint8": QuantType.QUInt8,
                                             "int8": QuantType.QInt8}[activations],
                            weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
                            extra_options={"ActivationSymmetric": False,
                                           "WeightSymmetric": True})
        except Exception as err:
            raise DeploytoolError(f"ONNX Runtime could not quantize the model: {last_line(err)}",
                                  "Compile it with --precision fp32") from err
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(quantized)


def constants_as_initializers(proto):
    """A copy of ``proto`` with its Constant nodes' tensors as initializers: ONNX Runtime's
    quantizer quantizes the weights it finds among the initializers only, and a frozen
    TorchScript model exports its weights as Constant nodes (GoogLeNet's int8 package had no
    integer product)."""
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    nodes = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) \
            if node.op_type == "Constant" else None
        if value is None:
            nodes.append(node)
            continue
        value.name = node.output[0]
        graph.initializer.append(value)
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def own_weights(proto):
    """``proto`` with each weight (and bias) that several convolutions or matrix products share
    copied, one for each: ONNX Runtime's quantizer quantizes a shared initializer as an
    activation, per tensor and unsigned, so the products reading it stayed float32 (ALBERT's
    layers share theirs; the exporter writes a weight equal to another, as RegNetY's
    zero-initialized ones, as an Identity of it)."""
    from collections import Counter

    from onnx import numpy_helper

    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    # the exporter writes a weight equal to another as an Identity of it
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[0]]),
                                           node.output[0])
            graph.initializer.append(copy)
            initializers[copy.name] = copy
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    readers = Counter(name for node in graph.node for name in node.input if name in initializers)
    copies: Counter = Counter()
    for node in graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        for position in (1, 2):
            name = node.input[position] if len(node.input) > position else ""
            if readers[name] < 2:
                continue
            copies[name] += 1
            if copies[name] == 1:
                continue  # the first reader keeps the original
            own = f"{name}/copy{copies[name]}"
            graph.initializer.append(numpy_helper.from_array(
                numpy_helper.to_array(initializers[name]), own))
            node.input[position] = own
    return proto
