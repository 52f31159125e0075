"""The torch reference in float64: how far fp32 itself is from the exact result.

Deep models with random weights amplify rounding: torchvision's EfficientNetV2-S (random
weights, 64x64) gives outputs of about 1.4e3 on which ONNX Runtime differs from the float64
result by 1.9e-3 of their scale. No fp32 package can be held closer than the fp32 references
are to the exact result. The model run in float64 measures that floor for each output;
validation widens the bound to a multiple of it (see ``validate._error_bounds``).

Two fp32 references can both be nearly exact by chance: a linear layer whose 8 products of
about 0.3 cancel to an output of 0.024 came out of ONNX Runtime and torch within 1e-7 of its
scale, and out of a correct package 1.4e-6 away (another order of summation). The float64
model run once more with every weight moved by one fp32 rounding (a random sign times 2**-24,
the backward error of one rounding per product) measures that cancellation: its distance from
the float64 result counts as one more fp32 reference. One draw of the signs can cancel by chance
on a small output (1.8e-9 there, against 5e-8 typical), so it is drawn ROUNDED_DRAWS times.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import numpy as np

Arrays = list[np.ndarray]
# fp32 rounding of a model that computes anything useful stays well below this share of the
# outputs' scale (the zoo's worst, EfficientNetV2-S with random weights: 3.5e-3).
MAX_ROUNDING = 2e-2
UNIT_ROUNDOFF = 2.0 ** -24  # fp32
ROUNDED_DRAWS = 3


def _doubled(arrays: Arrays) -> Arrays:
    return [a.astype(np.float64) if a.dtype == np.float32 else a for a in arrays]


def _rounded_weights(module, seed: int = 0):
    """``module`` with each float parameter and buffer element moved by one fp32 rounding."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.is_floating_point():
                sign = torch.randint(0, 2, t.shape, generator=generator).to(t.dtype) * 2 - 1
                t.mul_(1 + UNIT_ROUNDOFF * sign)
    return module


def torchscript_float64(path, perturb: int | None = None) -> Callable[[Arrays], Arrays]:
    """A TorchScript model loaded afresh and run in float64 (weights and float inputs); with
    ``perturb`` (a seed), each weight moved by one fp32 rounding."""
    import torch

    from ..frontends.torchscript import run_torchscript

    module = torch.jit.load(str(path), map_location="cpu").double().eval()
    if perturb is not None:
        _rounded_weights(module, perturb)
    return lambda arrays: run_torchscript(module, _doubled(arrays))


def exported_float64(program, perturb: int | None = None) -> Callable[[Arrays], Arrays]:
    """A torch.export program's module, copied and run in float64; with ``perturb`` (a seed),
    each weight moved by one fp32 rounding."""
    from ..frontends.exported import run_module_named

    module = copy.deepcopy(program.module()).double()
    if perturb is not None:
        _rounded_weights(module, perturb)
    return lambda arrays: [a for _, a in run_module_named(module, _doubled(arrays))]


def float64_results(run64: Callable[[Arrays], Arrays] | None, samples: list[Arrays],
                    outputs: int) -> list[Arrays] | None:
    """Each sample's outputs of the model run in float64; None where there is no float64 run,
    where it fails (a dtype fixed in its graph) or gives another number of outputs."""
    if run64 is None:
        return None
    results = []
    for arrays in samples:
        try:
            exact = run64(arrays)
        except Exception:  # a graph with float32 baked in: no floor, the default bound holds
            return None
        if len(exact) != outputs:
            return None
        results.append(exact)
    return results


def fp32_error(exact: list[Arrays] | None, references: list[dict[str, Arrays]],
               rounded: list[list[Arrays] | None] = ()) -> list[list[float]] | None:
    """For each sample, each output's largest max|fp32 - fp64| / max|fp64| over the fp32
    references (ONNX Runtime, torch) and the ``rounded`` draws (:func:`float64_results` of the
    model with rounded weights, None where it could not run), against the float64 results
    ``exact`` (:func:`float64_results`); None without them. Per sample: rounding can be large on one
    input and small on the next (EfficientNetV2-S: 3.5e-3 and 5e-6), and a bound loosened
    for one sample would hide a wrong layer on the others."""
    if exact is None:
        return None
    draws = [d for d in rounded if d is not None]
    return [[max(_rounding(e, outputs[i])
                 for outputs in [*by_reference.values(), *(d[k] for d in draws)])
             for i, e in enumerate(sample)]
            for k, (sample, by_reference) in enumerate(zip(exact, references, strict=True))]


def faithful(exact, outputs: list) -> bool:
    """Whether a float64 output can stand for the exact result of the fp32 references'
    ``outputs``: a float tensor that every one of them is within rounding of."""
    exact = np.asarray(exact)
    return (exact.dtype.kind == "f" and bool(outputs)
            and all(np.asarray(o).shape == exact.shape
                    and _scaled_error(exact, o) <= MAX_ROUNDING for o in outputs))


def _rounding(exact, output) -> float:
    """A reference's scaled error against float64, where it can be rounding: a reference that
    is further off computes something else (a model other than the one compiled), and 0."""
    error = _scaled_error(exact, output)
    return error if error <= MAX_ROUNDING else 0.0


def _scaled_error(exact, output) -> float:
    exact, output = np.asarray(exact, dtype=np.float64), np.asarray(output, dtype=np.float64)
    scale = float(np.abs(exact).max()) if exact.size else 0.0
    if exact.shape != output.shape or not np.isfinite(scale) or scale == 0:
        return 0.0
    return float(np.nan_to_num(np.abs(exact - output)).max()) / scale
