"""Bjøntegaard delta rate: the average rate difference of two RD curves at equal quality.

Method: log-rate as a piecewise cubic (PCHIP) function of PSNR for each curve, integrated over
the PSNR range both curves cover (the interpolation JVET's CTC tools use instead of the
original cubic polynomial, which overshoots on unevenly spaced points). Negative is better:
-0.2 means the test codec needs 20% fewer bits for the same quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

BD_RATE_METHOD = ("Bjøntegaard delta rate: log-rate as a PCHIP function of RGB PSNR, "
                  "over the PSNR range both curves cover")


def bd_rate(
    anchor_rates: Sequence[float], anchor_psnrs: Sequence[float],
    test_rates: Sequence[float], test_psnrs: Sequence[float],
) -> float:
    """Relative rate change of `test` against `anchor` (a fraction: -0.1 is 10% fewer bits).

    Raises ValueError when the curves have fewer than two points each, non-positive rates, or
    PSNR ranges that do not overlap (no honest number exists then).
    """
    low = max(min(anchor_psnrs), min(test_psnrs))
    high = min(max(anchor_psnrs), max(test_psnrs))
    if high <= low:
        raise ValueError("the two RD curves do not overlap in PSNR")
    return float(np.expm1(_mean_log_rate(test_rates, test_psnrs, low, high)
                          - _mean_log_rate(anchor_rates, anchor_psnrs, low, high)))


def _mean_log_rate(rates: Sequence[float], psnrs: Sequence[float], low: float, high: float) -> float:
    if len(rates) != len(psnrs) or len(rates) < 2:
        raise ValueError("each RD curve needs at least two (rate, PSNR) points")
    if min(rates) <= 0:
        raise ValueError("rates must be positive")
    order = np.argsort(psnrs)
    psnr = np.asarray(psnrs, dtype=float)[order]
    log_rate = np.log(np.asarray(rates, dtype=float)[order])
    if np.any(np.diff(psnr) <= 0):
        raise ValueError("PSNR must differ between the points of a curve")
    curve = PchipInterpolator(psnr, log_rate)
    return float(curve.integrate(low, high) / (high - low))
