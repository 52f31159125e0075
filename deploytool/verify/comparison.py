"""Compare an output with a reference: errors relative to the output's own scale, and allclose.

The pass rule (docs/validation.md): an output passes when it holds no NaN where the reference
has none, its largest error is at most ``max_error`` times the reference's largest magnitude
(the *scaled error*, the measure TensorRT's and Polygraphy's accuracy tools call the relative
max error), and, when ``atol`` or ``rtol`` is given, every element satisfies allclose
``|a - r| <= atol + rtol * |r|``. Integer outputs must match exactly unless ``atol`` is given.
Cosine similarity and the signal-to-noise ratio are reported beside them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from . import DEFAULT_MAX_ERROR


@dataclass
class Comparison:
    """How one output compares with one reference."""

    output: str
    reference: str
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    min_atol: float  # the smallest atol that would pass allclose with this rtol (0 if None)
    worst_index: list[int]
    atol: float | None
    rtol: float | None
    passed: bool
    nan_count: int = 0
    scale: float = 0.0  # max |reference| over finite elements
    scaled_error: float = 0.0  # max_abs_error / scale (inf when scale is 0 and they differ)
    cosine: float = 1.0
    snr_db: float = math.inf
    max_error: float | None = DEFAULT_MAX_ERROR
    nan_actual: int = 0  # NaN in the package's output
    nan_expected: int = 0  # NaN in the reference's

    def to_dict(self) -> dict:
        return asdict(self)


def _finite_max(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.max()) if finite.size else 0.0


def cosine_and_snr(a: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(a) & np.isfinite(r)
    a, r = a[ok], r[ok]
    noise = float(np.sum((a - r) ** 2))
    signal = float(np.sum(r ** 2))
    norms = float(np.linalg.norm(a) * np.linalg.norm(r))
    cosine = float(np.dot(a, r) / norms) if norms > 0 else (1.0 if noise == 0 else 0.0)
    if noise == 0:
        snr = math.inf
    elif signal == 0:
        snr = -math.inf
    else:
        snr = 10 * math.log10(signal / noise)
    return cosine, snr


def compare(output: str, reference: str, actual: np.ndarray, expected: np.ndarray,
            atol: float | None = None, rtol: float | None = None,
            max_error: float | None = DEFAULT_MAX_ERROR) -> Comparison:
    """Compare ``actual`` with ``expected`` element by element.

    Parameters
    ----------
    output, reference : str
        Names for the report: the output and the reference backend.
    actual, expected : numpy.ndarray
        Arrays of the same shape.
    atol, rtol : float, optional
        Tolerances of the allclose rule; None for both leaves it out.
    max_error : float, optional
        Bound on the scaled error; None leaves it out.

    Returns
    -------
    Comparison
    """
    if actual.shape != expected.shape:
        inf = float("inf")
        return Comparison(output, reference, inf, inf, inf, inf, [], atol, rtol, False,
                          scale=inf, scaled_error=inf, cosine=0.0, snr_db=-inf,
                          max_error=max_error)
    exact = not np.issubdtype(expected.dtype, np.floating) and atol is None and rtol is None
    a = actual.astype(np.float64).ravel()
    r = expected.astype(np.float64).ravel()
    nan = np.isnan(a) | np.isnan(r)
    same_inf = np.isinf(a) & np.isinf(r) & (a == r)
    with np.errstate(invalid="ignore"):
        diff = np.where(same_inf | nan, 0.0, np.abs(a - r))
    diff = np.where(np.isnan(diff), np.inf, diff)  # inf against a finite value
    excess = diff - (rtol or 0.0) * np.where(np.isfinite(r), np.abs(r), 0.0)
    excess = np.where(nan, np.inf, excess)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(r))
    worst = int(np.argmax(excess)) if excess.size else 0
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = _finite_max(np.abs(r))
    scaled = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    cosine, snr = cosine_and_snr(a, r)
    if exact:
        within = max_abs == 0
    else:
        within = max_error is None or scaled <= max_error
        if atol is not None or rtol is not None:
            within = within and bool((excess <= (atol or 0.0)).all())
    return Comparison(
        output=output, reference=reference,
        max_abs_error=max_abs,
        max_rel_error=float(np.nan_to_num(rel, nan=np.inf).max()) if rel.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        min_atol=float(max(excess.max(), 0.0)) if excess.size else 0.0,
        worst_index=[int(i) for i in np.unravel_index(worst, actual.shape)] if a.size else [],
        atol=atol, rtol=rtol,
        passed=bool(not nan.any() and within),
        nan_count=int(nan.sum()),
        nan_actual=int(np.isnan(a).sum()), nan_expected=int(np.isnan(r).sum()),
        scale=scale, scaled_error=scaled, cosine=cosine, snr_db=snr, max_error=max_error,
    )
