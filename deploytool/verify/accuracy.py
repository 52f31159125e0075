"""Validation of a reduced-precision package: how closely it agrees with the float32 model
(cosine similarity, SNR, top-1 agreement), and with a peer computing the same reduced precision:
ONNX Runtime on the same quantized model (int8), or on the float32 model with the same operands
rounded to bfloat16 or float16 (bf16, fp16: see precision/emulation.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .comparison import cosine_and_snr

Arrays = list[np.ndarray]
FP32 = "fp32"  # the float32 model (ONNX Runtime)
PEER = "onnxruntime-int8"  # the same quantized model in ONNX Runtime, its QLinear kernels
# ... and without ONNX Runtime's graph optimizations: each DequantizeLinear, operator and
# QuantizeLinear in float as the graph reads. The two disagree by up to cosine 0.90 (a
# random-weight RegNetX-400MF's grouped convolutions) and 0.999 (ViT-Tiny's 12 layers), and a
# correct package can match either: it is held to the closer one, within the two's own spread.
LITERAL_PEER = "onnxruntime-qdq"
INT8_PEERS = (PEER, LITERAL_PEER)
# bf16, fp16: the float32 model, its products' operands rounded (onnxruntime-bf16, -fp16), and
# the same with each rounded activation first moved by a few ulps (precision/emulation.py)
HALF_PEER = "onnxruntime-{}"
JITTERED_PEER = "onnxruntime-{}-jitter{}"


# The package may err against fp32 (1 - cosine) PEER_SLACK times as much as the peer does, where
# that is more than the threshold allows; where the peer's top-1 agreement is below the
# threshold, the package's may be TOP1_SLACK less (one sample in ten moves it by 0.1).
PEER_SLACK = 2
TOP1_SLACK = 0.15
# Against the peer, the package may differ by this share of the peer's own error against fp32
# (1 - cosine), where that is above the peer threshold: MobileNetV2 with random weights and
# seeded calibration, whose int8 is itself far from fp32 (cosine 0.964), differed from ONNX
# Runtime's by cosine 0.9967. A wrong zero point or scale differs by more than the model's
# whole int8 error.
PEER_SHARE = 0.25


@dataclass
class Thresholds:
    """The least agreement a package must reach, recorded in its manifest.

    Against the float32 model: what int8 costs a model calibrated on its data (ONNX Runtime's
    own int8 result must reach it too, or the model does not quantize well). Against ONNX
    Runtime on the same quantized model: near equality, since both compute the same integers;
    a wrong zero point or scale falls far below it.
    """

    fp32_cosine: float = 0.98
    fp32_top1: float = 0.9  # classifier outputs (2-D, a class axis) only
    peer_cosine: float | None = 0.999

    def to_dict(self) -> dict:
        return asdict(self)


# bf16 rounds each product's operands to 8 significant bits and sums in float32: ResNet-18,
# ConvNeXt-Tiny and BERT agree with float32 at cosine 0.9999 and above; a wrong weight layout
# or a lost accumulation falls far below 0.999. Against the same rounding in ONNX Runtime only
# the order of the float32 sums differs.
BF16_THRESHOLDS = Thresholds(fp32_cosine=0.999, fp32_top1=0.9, peer_cosine=0.9999)
FP16_THRESHOLDS = Thresholds(fp32_cosine=0.999, fp32_top1=0.9, peer_cosine=0.9999)
HALF_THRESHOLDS = {"bf16": BF16_THRESHOLDS, "fp16": FP16_THRESHOLDS}
# A bf16 or fp16 package's self-test vectors, where the compiling machine cannot run it, are the
# float32 model's outputs, within this share of each output's scale (ResNet-18 in bf16 differed
# by 0.011).
HALF_VECTOR_BOUND = 0.05
HALF_SAMPLES = 8  # seeded samples a bf16 or fp16 package is validated on, at least


@dataclass
class Agreement:
    """One output against one reference, over every sample: the worst cosine and SNR, and for
    classifier outputs the share of rows whose arg-max agrees."""

    output: str
    reference: str
    cosine: float
    snr_db: float
    top1: float | None
    passed: bool
    min_cosine: float  # the thresholds it was held to
    min_top1: float | None
    undecided: int = 0  # rows left out of top1: the reference's margin within the peer's error

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AccuracyReport:
    agreements: list[Agreement]
    samples: int
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.agreements) and all(a.passed for a in self.agreements)

    @property
    def status(self) -> str:
        return "PASSED" if self.passed else "FAILED"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "result": self.status, "samples": self.samples,
                "thresholds": self.thresholds.to_dict(), "notes": self.notes,
                "agreements": [a.to_dict() for a in self.agreements]}

    def format(self) -> str:
        lines = [f"{'output':<12} {'reference':<24} {'cosine':>10} {'at least':>10} "
                 f"{'SNR dB':>7} {'top-1':>6} {'at least':>8}  result"]
        for a in self.agreements:
            top1 = "-" if a.top1 is None else f"{a.top1:.0%}"
            least = "-" if a.top1 is None or a.min_top1 is None else f"{a.min_top1:.0%}"
            lines.append(f"{a.output[:12]:<12} {a.reference:<24} {a.cosine:10.6f} "
                         f"{a.min_cosine:10.6f} {a.snr_db:7.1f} {top1:>6} {least:>8}  "
                         f"{'PASSED' if a.passed else 'FAILED'}")
        t = self.thresholds
        lines += [f"note: {n}" for n in self.notes]
        peer = "" if t.peer_cosine is None else f", cosine {t.peer_cosine:g} against the peer"
        lines.append(f"validation {self.status}: {sum(a.passed for a in self.agreements)}/"
                     f"{len(self.agreements)} agreements at their thresholds (cosine "
                     f"{t.fp32_cosine:g} and top-1 {t.fp32_top1:.0%} against {FP32}{peer}, "
                     f"or as the notes say; {self.samples} samples)")
        return "\n".join(lines)


def is_classifier(output: np.ndarray) -> bool:
    """A batch of class scores: 2-D, more than one class."""
    return output.ndim == 2 and output.shape[1] > 1 and output.dtype.kind == "f"


def measure(names: list[str], package: list[Arrays], reference: list[Arrays], label: str,
            min_cosine: float, min_top1: float | None,
            noise: list[float] | None = None) -> list[Agreement]:
    """The package's outputs against one reference's, sample by sample. With ``noise`` (per
    sample, the largest difference between the peer and the reference), top-1 leaves out the
    rows whose two highest reference scores are closer than twice that: the reduced precision
    alone can swap them (a random-weight ViT's logits were 0.02 standard deviations apart, its
    int8 error 0.12)."""
    found = []
    for i, name in enumerate(names):
        cosines, snrs, agree, rows, undecided = [], [], 0, 0, 0
        for j, (ours, theirs) in enumerate(zip(package, reference, strict=True)):
            a = np.asarray(ours[i], dtype=np.float64)
            r = np.asarray(theirs[i], dtype=np.float64)
            cosine, snr = cosine_and_snr(a.ravel(), r.ravel())
            cosines.append(cosine)
            snrs.append(snr)
            if is_classifier(np.asarray(theirs[i])):
                top2 = np.sort(r, axis=1)[:, -2:]
                decided = top2[:, 1] - top2[:, 0] > (0 if noise is None else 2 * noise[j])
                agree += int((a.argmax(axis=1) == r.argmax(axis=1))[decided].sum())
                rows += int(decided.sum())
                undecided += int((~decided).sum())
        top1 = agree / rows if rows else None
        passed = min(cosines) >= min_cosine and (
            min_top1 is None or top1 is None or top1 >= min_top1)
        found.append(Agreement(name, label, min(cosines), min(snrs) if snrs else math.inf,
                               top1, passed, min_cosine, min_top1, undecided))
    return found


def validate_accuracy(names: list[str], samples: list[Arrays],
                      package: Callable[[Arrays], Arrays], fp32: Callable[[Arrays], Arrays],
                      peer: Callable[[Arrays], Arrays] | dict | None,
                      thresholds: Thresholds | None = None, peer_label: str = PEER
                      ) -> AccuracyReport:
    """Run the package and the references on every sample and measure their agreement.

    Parameters
    ----------
    names : list of str
        The outputs' names.
    samples : list of input arrays
        Calibration samples (the data the model will see) and seeded ones.
    package, fp32, peer : callable
        Run one sample: the package, the float32 model, the same reduced precision elsewhere
        (None: no peer, the package is held to ``thresholds`` against fp32 alone). ``peer`` may
        be a dict of executions of the same peer by label: each output is held to the one it
        agrees with best.
    peer_label : str
        The peer's name in the report (of a single one).
    """
    thresholds = thresholds or Thresholds()
    ours = [package(s) for s in samples]
    expected = [fp32(s) for s in samples]
    report = AccuracyReport([], len(samples), thresholds)
    if peer is None:
        for i, name in enumerate(names):
            report.agreements += measure([name], _column(ours, i), _column(expected, i), FP32,
                                         thresholds.fp32_cosine, thresholds.fp32_top1)
        return report
    peers = peer if isinstance(peer, dict) else {peer_label: peer}
    results = {label: [run(s) for s in samples] for label, run in peers.items()}
    for i, name in enumerate(names):
        peer_label, theirs = max(results.items(), key=lambda item: measure(
            [name], _column(ours, i), _column(item[1], i), "", 0, None)[0].cosine)
        # the quantized model's own accuracy, which the package cannot exceed by much
        baseline = measure([name], _column(theirs, i), _column(expected, i), "", 0, None)[0]
        cosine, top1 = thresholds.fp32_cosine, thresholds.fp32_top1
        # the bound moves continuously from the threshold to PEER_SLACK times the peer's error:
        # a peer just above the threshold (DenseNet-121's bf16 emulation) leaves the package as
        # much room as one just below it
        cosine = min(cosine, 1 - PEER_SLACK * (1 - baseline.cosine))
        if baseline.top1 is not None and baseline.top1 < top1:
            top1 = baseline.top1 - TOP1_SLACK
        # the package differs from the peer by rounding steps (of the requantization, or of
        # float32 sums in another order), which compound through a deep model as the model's
        # own reduced-precision error does
        peer_cosine = min(thresholds.peer_cosine, 1 - PEER_SHARE * (1 - baseline.cosine))
        spread = _spread(results, i)
        if spread < peer_cosine:
            peer_cosine = spread
            report.notes.append(f"output '{name}': the peer's executions ({', '.join(results)}) "
                                f"differ from each other by cosine {spread:.4f}, which the "
                                "package may differ from the closest by")
        if cosine < thresholds.fp32_cosine or top1 < thresholds.fp32_top1:
            report.notes.append(
                f"output '{name}': {peer_label} reaches only cosine "
                f"{baseline.cosine:.4f}" + ("" if baseline.top1 is None else
                                            f", top-1 {baseline.top1:.0%}")
                + " against fp32, so the package is held to that (the model itself loses "
                "accuracy in reduced precision" + (": calibrate on real data)"
                                                   if peer_label in INT8_PEERS else ")"))
        noise = [float(np.abs(np.asarray(t[i], np.float64) - e[i]).max())
                 for t, e in zip(theirs, expected, strict=True)]
        against_fp32 = measure([name], _column(ours, i), _column(expected, i), FP32,
                               cosine, top1, noise)[0]
        if against_fp32.undecided:
            report.notes.append(
                f"output '{name}': top-1 leaves out {against_fp32.undecided} rows whose two "
                f"highest fp32 scores are closer than twice {peer_label}'s own error (its "
                "rounding alone can swap them)")
        against_peer = measure([name], _column(ours, i), _column(theirs, i), peer_label,
                               peer_cosine, None)[0]
        if not against_peer.passed and against_fp32.cosine >= baseline.cosine:
            # farther from the peer, but closer to fp32 than the peer is: rounded differently,
            # not wrongly
            against_peer.passed = True
            report.notes.append(f"output '{name}': the package is closer to fp32 (cosine "
                                f"{against_fp32.cosine:.4f}) than {peer_label} is "
                                f"({baseline.cosine:.4f}), which passes it against the peer")
        report.agreements += [against_fp32, against_peer]
    return report


def _spread(results: dict, i: int) -> float:
    """The least cosine between any two of the peer's executions on output ``i`` (1.0 for one
    execution): how far apart rounding alone puts two correct computations of the model."""
    runs = list(results.values())
    return min((measure(["y"], _column(a, i), _column(b, i), "", 0, None)[0].cosine
                for k, a in enumerate(runs) for b in runs[k + 1:]), default=1.0)


def _column(outputs: list[Arrays], i: int) -> list[Arrays]:
    """Output ``i`` of every sample, as one-output samples."""
    return [[sample[i]] for sample in outputs]


# Calibration samples that validation reruns (with the seeded ones): enough to measure top-1
# agreement in steps of a few percent without running the package a hundred times.
MAX_CALIBRATION_SAMPLES = 32
REFERENCE_ONNX = "reference.onnx"  # the float32 model, kept in a reduced-precision package


def validate_reduced_package(package, seeded: list[Arrays], calibration: list[Arrays],
                             thresholds: Thresholds | None = None) -> AccuracyReport:
    """Validate a reduced-precision package on calibration and seeded samples (see
    :func:`validate_accuracy`): the package runs natively (or under its emulator), against the
    float32 model (``reference.onnx`` of an int8 package, ``model.onnx`` or the model file of a
    bf16 or fp16 one) and a peer: for int8 the quantized model (``model.onnx``) in ONNX Runtime,
    optimized or as the graph reads (the closer of the two), for bf16 and fp16 the emulated
    one, plain or jittered (the closest)."""
    from .validate import onnxruntime_backend, run_native

    precision = package.manifest.get("precision") or {}
    recorded = precision.get("thresholds")
    thresholds = thresholds or (Thresholds(**recorded) if recorded else None)
    samples = calibration[:MAX_CALIBRATION_SAMPLES] + seeded
    if precision.get("mode") == "int8":
        fp32, label = onnxruntime_backend(package, package.path / REFERENCE_ONNX), PEER
        peer = {PEER: onnxruntime_backend(package),
                LITERAL_PEER: onnxruntime_backend(package, optimized=False)}
    else:
        fp32, peer = float32_reference(package), _emulated_half(package, precision["mode"])
        label = HALF_PEER.format(precision["mode"])
    report = validate_accuracy([s.name for s in package.outputs], samples,
                               lambda arrays: run_native(package, arrays), fp32, peer,
                               thresholds, label)
    if len(calibration) > MAX_CALIBRATION_SAMPLES:
        report.notes.append(f"{MAX_CALIBRATION_SAMPLES} of the {len(calibration)} calibration "
                            "samples were rerun")
    return report


def _emulated_half(package, precision: str) -> dict | None:
    """ONNX Runtime on the package's model.onnx with the rounding of ``precision`` (bf16 or
    fp16), plain and jittered, by label; None without one (a model built on the torch.export
    route is held to the float32 model alone) or where it rounds no product. Each emulation is
    built when first run, and only one is alive at a time (see OneAtATime)."""
    import onnx

    from ..build.half_rewrites import HALF_PRODUCTS
    from ..precision.emulation import JITTER_SEEDS, emulated_half
    from .validate import onnxruntime_backend

    path = package.path / "model.onnx"
    if not path.is_file():
        return None
    model, half = onnx.load(path), HALF_PRODUCTS[precision]
    if not emulated_half(model, half)[1]:  # no product it knows: the float32 model again
        return None

    def build(jitter: int | None):
        return lambda: onnxruntime_backend(
            package, emulated_half(model, half, jitter=jitter)[0].SerializeToString())

    alive = OneAtATime()
    peers = {HALF_PEER.format(precision): alive.run(build(None))}
    for seed in JITTER_SEEDS:
        peers[JITTERED_PEER.format(precision, seed)] = alive.run(build(seed))
    return peers


class OneAtATime:
    """Executions built when first run, the one before released first: validate_accuracy runs
    each peer's samples in turn, so each is built once, and the three emulations of a large
    model do not hold three copies of its weights at once (BERT-medium's bf16 validation peaked
    at 248 MB instead of 353 MB)."""

    def __init__(self):
        self._build = self._running = None

    def run(self, build: Callable[[], Callable[[Arrays], Arrays]]) -> Callable[[Arrays], Arrays]:
        def call(arrays: Arrays) -> Arrays:
            if self._build is not build:
                self._running = None  # released before the next one is built
                self._running, self._build = build(), build
            return self._running(arrays)

        return call


def float32_reference(package) -> Callable[[Arrays], Arrays]:
    """The float32 model of a bf16 or fp16 package: its model.onnx in ONNX Runtime, or, built on the
    torch.export route, the model file it was compiled from."""
    from ..errors import DeploytoolError
    from .validate import model_references, onnxruntime_backend

    if (package.path / "model.onnx").is_file():
        return onnxruntime_backend(package)
    notes: list[str] = []
    found = model_references(package, notes)
    if not found:
        raise DeploytoolError(f"no float32 reference for {package.path}: {'; '.join(notes)}",
                              "Keep the model file where it was compiled from")
    return next(iter(found.values()))


def seeded_samples(package, options) -> list[Arrays]:
    """``options.samples`` seeded inputs (ValidationOptions), within the model's input ranges;
    at least HALF_SAMPLES for a bf16 or fp16 package, which has no calibration samples."""
    from .inputs import make_inputs

    ranges = {k: tuple(v) for k, v in package.manifest.get("input_ranges", {}).items()}
    count = options.samples
    if (package.manifest.get("precision") or {}).get("mode") in HALF_THRESHOLDS:
        count = max(count, HALF_SAMPLES)
    return [make_inputs(package.inputs, options.seed + i, options.ranges, None, ranges)
            for i in range(count)]


def is_reduced(package) -> bool:
    return (package.manifest.get("precision") or {}).get("mode", "fp32") != "fp32"
