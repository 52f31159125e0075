"""Compare outputs with a reference under the allclose rule, with the figures a report needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Comparison:
    """How one output compares with one reference.

    The pass rule is allclose: ``|a - r| <= atol + rtol * |r|`` for every element; a NaN on either
    side never passes; infinities pass only where both sides hold the same infinity.
    """

    output: str
    reference: str
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    min_atol: float  # the smallest atol that would pass with this rtol
    worst_index: list[int]
    atol: float
    rtol: float
    passed: bool
    nan_count: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def compare(output: str, reference: str, actual: np.ndarray, expected: np.ndarray,
            atol: float, rtol: float) -> Comparison:
    """Compare ``actual`` with ``expected`` element by element.

    Parameters
    ----------
    output, reference : str
        Names for the report: the output and the reference backend.
    actual, expected : numpy.ndarray
        Arrays of the same shape.
    atol, rtol : float
        Tolerances of the allclose rule.

    Returns
    -------
    Comparison
    """
    if actual.shape != expected.shape:
        return Comparison(output, reference, float("inf"), float("inf"), float("inf"),
                          float("inf"), [], atol, rtol, False)
    a = actual.astype(np.float64).ravel()
    r = expected.astype(np.float64).ravel()
    nan = np.isnan(a) | np.isnan(r)
    same_inf = np.isinf(a) & np.isinf(r) & (a == r)
    with np.errstate(invalid="ignore"):
        diff = np.where(same_inf | nan, 0.0, np.abs(a - r))
    diff = np.where(np.isnan(diff), np.inf, diff)  # inf against a finite value
    excess = diff - rtol * np.where(np.isfinite(r), np.abs(r), 0.0)
    excess = np.where(nan, np.inf, excess)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(r))
    worst = int(np.argmax(excess)) if excess.size else 0
    return Comparison(
        output=output, reference=reference,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        max_rel_error=float(np.nan_to_num(rel, nan=np.inf).max()) if rel.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        min_atol=float(max(excess.max(), 0.0)) if excess.size else 0.0,
        worst_index=[int(i) for i in np.unravel_index(worst, actual.shape)] if a.size else [],
        atol=atol, rtol=rtol,
        passed=bool(not nan.any() and (excess <= atol).all()),
        nan_count=int(nan.sum()),
    )
