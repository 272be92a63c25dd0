"""BD-rate against known answers."""

import math

import pytest

from adaptcast_bench.bdrate import bd_rate

RATES = [0.02, 0.05, 0.11, 0.25]
PSNRS = [30.1, 33.0, 35.8, 38.4]


def test_identical_curves_give_zero():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 3.0])
def test_a_curve_scaled_in_rate_gives_that_factor(factor):
    assert bd_rate(RATES, PSNRS, [r * factor for r in RATES], PSNRS) == pytest.approx(factor - 1, rel=1e-9)


def test_a_curve_shifted_up_in_quality_needs_fewer_bits():
    better = bd_rate(RATES, PSNRS, RATES, [p + 1.0 for p in PSNRS])
    assert better < 0
    # on a straight log-rate line (slope s nats/dB) a 1 dB gain is exp(-s) - 1
    line_rates = [math.exp(0.2 * p) for p in PSNRS]
    assert bd_rate(line_rates, PSNRS, line_rates, [p + 1 for p in PSNRS]) == pytest.approx(math.exp(-0.2) - 1)


def test_curves_that_do_not_overlap_are_refused():
    with pytest.raises(ValueError):
        bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS])
    with pytest.raises(ValueError):
        bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS)
