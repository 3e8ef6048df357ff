"""Summaries of accuracy-versus-compute curves: distance to the oracle, area relative to best-of-N.

Curves are lists of ``(nfe, accuracy)`` points; compute is compared on a log₂ NFE axis (each
doubling of compute counts the same), and curves are interpolated linearly on that axis.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Curve = Sequence[tuple[float, float]]


def interpolate(curve: Curve, nfe: float) -> float:
    """The curve's accuracy at ``nfe`` (linear in log₂ NFE; NaN outside the curve's range)."""
    pts = sorted(curve)
    xs = np.log2([p[0] for p in pts])
    x = math.log2(nfe)
    if not len(pts) or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
        return float("nan")
    return float(np.interp(x, xs, [p[1] for p in pts]))


def fraction_to_oracle(accuracy: float, nfe: float, base: float, oracle: Curve) -> float:
    """How far ``accuracy`` is from best-of-1 (``base``) towards the oracle at the same NFE: 0 = no better than
    one sample, 1 = a perfect verifier's choice among as many particles as that NFE buys."""
    top = interpolate(oracle, nfe)
    if math.isnan(top) or top - base <= 1e-12:
        return float("nan")
    return (accuracy - base) / (top - base)


def area_ratio(method: Curve, reference: Curve) -> float:
    """Area under the method's accuracy-versus-log₂ NFE curve over its own NFE range, divided by the reference's
    (best-of-N) over the same range. A single point gives the accuracy ratio at that NFE. > 1: better than the
    reference at equal compute on average; NaN where the reference does not cover the range."""
    pts = sorted(method)
    if len(pts) == 1:
        ref = interpolate(reference, pts[0][0])
        return pts[0][1] / ref if ref and not math.isnan(ref) else float("nan")
    lo, hi = math.log2(pts[0][0]), math.log2(pts[-1][0])
    knots = sorted({math.log2(p[0]) for p in pts} | {math.log2(p[0]) for p in reference if lo <= math.log2(p[0]) <= hi})
    m = [interpolate(pts, 2**k) for k in knots]
    r = [interpolate(reference, 2**k) for k in knots]
    if any(math.isnan(v) for v in m + r):
        return float("nan")
    return _trapezoid(m, knots) / _trapezoid(r, knots)


def relative_area_gain(method: Curve, reference: Curve) -> float:
    """TTSnap's budget-utilisation metric (Yu et al. 2025, as in their released evaluation code): the gain in area
    under the score-versus-budget curve over the reference (best-of-N), both measured above ``y0`` = the reference's
    score at the smallest budget of the common range, on a *linear* budget axis:

        [∫(R_m − y0) dB − ∫(R_ref − y0) dB] / ∫(R_ref − y0) dB

    over the budgets both curves cover. TTSnap uses the reward and TFLOPs; pass any score (reward or accuracy)
    against any budget (NFE). NaN when the curves share less than two budgets or the reference area is zero."""
    m, r = sorted(method), sorted(reference)
    if len(m) < 2 or len(r) < 2:
        return float("nan")
    lo, hi = max(m[0][0], r[0][0]), min(m[-1][0], r[-1][0])
    if hi <= lo:
        return float("nan")
    knots = sorted({lo, hi} | {b for b, _ in m + r if lo < b < hi})
    ym = np.interp(knots, [b for b, _ in m], [v for _, v in m])
    yr = np.interp(knots, [b for b, _ in r], [v for _, v in r])
    y0 = yr[0]
    ref_area = _trapezoid(list(yr - y0), knots)
    if abs(ref_area) < 1e-12:
        return float("nan")
    return (_trapezoid(list(ym - y0), knots) - ref_area) / ref_area


def _trapezoid(y: Sequence[float], x: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))
