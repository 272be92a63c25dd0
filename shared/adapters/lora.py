"""LoRA adapters on the synthesis transforms of Scale-Space Flow (Oh, Yang, Park, ACCV 2024).

Each adapted transposed convolution W (in x out x k x k) gets a low-rank update

    W' = W + s * reshape(up @ down),   up: in x r,   down: r x (out*k*k),   s = alpha / r = 2

where `down` starts from random values drawn from a seed carried in the stream and `up` starts
at zero, so an untrained adapter decodes exactly as the base model. An adapter travels as
integer symbols: the deviations of both factors from their initial values in bins of
`bin_width`, one flat int32 vector in layer order (down, then up, per layer). Only the three
synthesis transforms are ever adapted: the hyperpriors, and so every entropy parameter, stay
the base model's, which is what lets a receiver fall back to the base model at any time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from shared.codec.ssf import ScaleSpaceFlow, SynthesisWeights

ADAPTED_DECODERS = ("img_decoder", "motion_decoder", "res_decoder")
DEFAULT_RANKS = (16, 8, 8, 2)
"""Ranks of the four layers of each synthesis transform, first to last (the paper's)."""
BIN_WIDTH = 0.005
ALPHA_PER_RANK = 2.0
"""alpha = 2r, so the LoRA scaling alpha / r is 2 for every layer."""
MAX_RANK = 64


@dataclass(frozen=True)
class AdapterSpec:
    """The shape of an adapter: both ends must agree on it, so it travels with every update."""

    ranks: tuple[int, ...] = DEFAULT_RANKS
    """Rank per synthesis layer (0 leaves a layer unadapted)."""
    decoders: tuple[str, ...] = ADAPTED_DECODERS
    seed: int = 0
    """Seeds the random initial `down` factors, so only deviations from them cost bits."""
    bin_width: float = BIN_WIDTH

    def __post_init__(self) -> None:
        if len(self.ranks) != 4 or not all(isinstance(r, int) and 0 <= r <= MAX_RANK for r in self.ranks):
            raise ValueError(f"ranks must be 4 integers in 0..{MAX_RANK}, got {self.ranks}")
        if not self.decoders or any(d not in ADAPTED_DECODERS for d in self.decoders) or len(set(self.decoders)) != len(self.decoders):
            raise ValueError(f"decoders must be distinct names from {ADAPTED_DECODERS}, got {self.decoders}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in 0..2^63-1, got {self.seed}")
        if not 1e-6 <= self.bin_width <= 1.0:
            raise ValueError(f"bin width must be in [1e-6, 1], got {self.bin_width}")


@dataclass(frozen=True)
class AdaptedLayer:
    name: str
    """Parameter name of the weight, e.g. `img_decoder.0.weight`."""
    in_channels: int
    out_channels: int
    kernel: int
    rank: int

    @property
    def down_shape(self) -> tuple[int, int]:
        return self.rank, self.out_channels * self.kernel * self.kernel

    @property
    def up_shape(self) -> tuple[int, int]:
        return self.in_channels, self.rank

    @property
    def size(self) -> int:
        """Symbols of this layer: down then up."""
        return self.rank * (self.out_channels * self.kernel * self.kernel + self.in_channels)


class AdapterLayout:
    """Where each layer's factors sit in the flat symbol vector, and their seeded start."""

    def __init__(self, model: ScaleSpaceFlow, spec: AdapterSpec) -> None:
        self.spec = spec
        self.layers: list[AdaptedLayer] = []
        for decoder in spec.decoders:
            deconvs = [(i, m) for i, m in enumerate(getattr(model, decoder)) if isinstance(m, nn.ConvTranspose2d)]
            for (index, layer), rank in zip(deconvs, spec.ranks):
                if rank:
                    in_ch, out_ch, k, _ = layer.weight.shape
                    self.layers.append(AdaptedLayer(f"{decoder}.{index}.weight", in_ch, out_ch, k, rank))
        self.size = sum(layer.size for layer in self.layers)
        rng = np.random.RandomState(spec.seed % 2**32)  # a frozen bit stream (NumPy's legacy policy)
        self.initial_down = [
            torch.from_numpy(rng.standard_normal(layer.down_shape) / np.sqrt(layer.down_shape[1])).float()
            for layer in self.layers
        ]

    def factors(self, values: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Split a flat vector of factor deviations (float) into (down, up) per layer."""
        pairs, offset = [], 0
        for layer, down0 in zip(self.layers, self.initial_down):
            down_n = layer.down_shape[0] * layer.down_shape[1]
            down = down0.to(values.device) + values[offset : offset + down_n].view(layer.down_shape)
            offset += down_n
            up_n = layer.up_shape[0] * layer.up_shape[1]
            up = values[offset : offset + up_n].view(layer.up_shape)
            offset += up_n
            pairs.append((down, up))
        return pairs

    def weights(self, model: ScaleSpaceFlow, values: Tensor) -> dict[str, Tensor]:
        """Adapted synthesis weights for factor deviations `values` (differentiable)."""
        params = dict(model.named_parameters())
        adapted = {}
        for layer, (down, up) in zip(self.layers, self.factors(values)):
            delta = (up @ down).view(layer.in_channels, layer.out_channels, layer.kernel, layer.kernel)
            base = params[layer.name]
            adapted[layer.name] = base + ALPHA_PER_RANK * delta.to(base.device)
        return adapted

    def dequantize(self, symbols: Tensor) -> Tensor:
        return symbols.to(torch.float32) * self.spec.bin_width


def adapted_weights(model: ScaleSpaceFlow, layout: AdapterLayout, symbols: Tensor) -> SynthesisWeights:
    """The decoder weights an adapter's symbols stand for, computed on the CPU at both ends."""
    if symbols.shape != (layout.size,):
        raise ValueError(f"adapter has {symbols.numel()} symbols, the layout needs {layout.size}")
    with torch.no_grad():
        return layout.weights(model, layout.dequantize(symbols.cpu()))
