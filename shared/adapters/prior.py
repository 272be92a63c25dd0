"""The spike-and-slab prior on adapter symbols: their rate in fitting and their CDF for rANS.

Most adapter parameters stay where they started, so the prior puts most of its mass (1000:1)
on a narrow spike at zero (sigma = bin width / 6: nearly all of it in the zero bin) and the
rest on a wide slab (sigma = 0.05) for the parameters that move (the paper's choices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from compressai._CXX import pmf_to_quantized_cdf
from torch import Tensor

MAX_CODED_SYMBOL = 64
"""Symbols beyond +-64 bins (6.4 slab sigmas) are escaped by the rANS coder's bypass mode."""
PRECISION = 16


@dataclass(frozen=True)
class SpikeSlabPrior:
    bin_width: float = 0.005
    slab_sigma: float = 0.05
    spike_weight: float = 1000.0 / 1001.0

    @property
    def spike_sigma(self) -> float:
        return self.bin_width / 6

    def _cdf(self, x: Tensor) -> Tensor:
        spike = 0.5 * torch.erfc(-x / (self.spike_sigma * math.sqrt(2)))
        slab = 0.5 * torch.erfc(-x / (self.slab_sigma * math.sqrt(2)))
        return self.spike_weight * spike + (1 - self.spike_weight) * slab

    def density_bits(self, values: Tensor) -> Tensor:
        """-log2 of the prior density times the bin width at continuous `values`.

        A smooth stand-in for `bits` during fitting: near zero the spike pulls a parameter
        back with a force that grows with its distance, so parameters whose gradients are weak
        stay exactly at their start and cost almost nothing.
        """
        spike = torch.exp(-0.5 * (values / self.spike_sigma) ** 2) / self.spike_sigma
        slab = torch.exp(-0.5 * (values / self.slab_sigma) ** 2) / self.slab_sigma
        density = (self.spike_weight * spike + (1 - self.spike_weight) * slab) / math.sqrt(2 * math.pi)
        return -torch.log2((density * self.bin_width).clamp_min(1e-30)).sum()

    @cached_property
    def quantized_cdf(self) -> list[int]:
        """16-bit CDF of symbols -64..64 plus the escape slot, in CompressAI's layout."""
        symbols = torch.arange(-MAX_CODED_SYMBOL, MAX_CODED_SYMBOL + 1, dtype=torch.float64) * self.bin_width
        half = self.bin_width / 2
        pmf = self._cdf(symbols + half) - self._cdf(symbols - half)
        tail = max(1.0 - float(pmf.sum()), 1e-9)
        return pmf_to_quantized_cdf(pmf.tolist() + [tail], PRECISION)
