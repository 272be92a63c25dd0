"""Decoder adapters on the synthesis transforms of Scale-Space Flow.

Two parameterizations share one symbol format, one prior and one wire format:

- `lora` (Oh, Yang, Park, ACCV 2024, the one we stream): each adapted transposed convolution
  W (in x out x k x k) gets a low-rank update

      W' = W + s * reshape(up @ down),   up: in x r,   down: r x (out*k*k),   s = alpha / r = 2

  where `down` starts from random values drawn from a seed carried in the stream and `up`
  starts at zero, so an untrained adapter decodes exactly as the base model. The symbols are
  the deviations of both factors from their initial values (down, then up, per layer).
- `full` (instance-adaptive full fine-tuning, van Rozendaal et al., arXiv 2111.10302, the
  baseline `adaptcast bench` compares against): every weight and bias of the adapted decoders
  moves; the symbols are the deltas from the base model's values.

Symbols are integers in bins of `bin_width`, one flat int32 vector in layer order. Only the
three synthesis transforms are ever adapted: the hyperpriors, and so every entropy parameter,
stay the base model's, which is what lets a receiver fall back to the base model at any time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from adaptcast.shared.codec.ssf import ScaleSpaceFlow, SynthesisWeights

ADAPTED_DECODERS = ("img_decoder", "motion_decoder", "res_decoder")
METHODS = ("lora", "full")
"""Parameterizations, in the order of their code on the wire."""
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
    """Rank per synthesis layer (0 leaves a layer unadapted); all 0 for `full`."""
    decoders: tuple[str, ...] = ADAPTED_DECODERS
    seed: int = 0
    """Seeds the random initial `down` factors, so only deviations from them cost bits."""
    bin_width: float = BIN_WIDTH
    method: str = "lora"
    """`lora`, or `full` for full fine-tuning of the decoders' weights and biases."""

    @classmethod
    def full(cls, decoders: tuple[str, ...] = ADAPTED_DECODERS, bin_width: float = BIN_WIDTH) -> AdapterSpec:
        return cls(ranks=(0, 0, 0, 0), decoders=decoders, bin_width=bin_width, method="full")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if len(self.ranks) != 4 or not all(isinstance(r, int) and 0 <= r <= MAX_RANK for r in self.ranks):
            raise ValueError(f"ranks must be 4 integers in 0..{MAX_RANK}, got {self.ranks}")
        if (self.method == "full") != (not any(self.ranks)):
            raise ValueError(f"a {self.method} adapter cannot have ranks {self.ranks}: lora needs a rank above 0, "
                             "full takes none")
        if (not self.decoders or any(d not in ADAPTED_DECODERS for d in self.decoders)
                or len(set(self.decoders)) != len(self.decoders)):
            raise ValueError(f"decoders must be distinct names from {ADAPTED_DECODERS}, got {self.decoders}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in 0..2^63-1, got {self.seed}")
        if not 1e-6 <= self.bin_width <= 1.0:
            raise ValueError(f"bin width must be in [1e-6, 1], got {self.bin_width}")


@dataclass(frozen=True, eq=False)
class LowRankLayer:
    """A LoRA update of one transposed convolution's weight."""

    name: str
    """Parameter name of the weight, e.g. `img_decoder.0.weight`."""
    shape: tuple[int, int, int, int]
    """in x out x k x k, as ConvTranspose2d stores it."""
    rank: int
    initial_down: Tensor
    """The seeded start of `down` (rank x out*k*k)."""

    @property
    def size(self) -> int:
        """Symbols of this layer: down then up."""
        in_channels, out_channels, kernel, _ = self.shape
        return self.rank * (out_channels * kernel * kernel + in_channels)

    def delta(self, values: Tensor) -> Tensor:
        down_n = self.initial_down.numel()
        down = self.initial_down.to(values.device) + values[:down_n].view(self.initial_down.shape)
        up = values[down_n:].view(self.shape[0], self.rank)
        return ALPHA_PER_RANK * (up @ down).view(self.shape)


@dataclass(frozen=True)
class DenseLayer:
    """A full fine-tuning delta of one weight or bias."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def delta(self, values: Tensor) -> Tensor:
        return values.view(self.shape)


class AdapterLayout:
    """Where each layer's symbols sit in the flat vector, and what they add to the base weights."""

    def __init__(self, model: ScaleSpaceFlow, spec: AdapterSpec) -> None:
        self.spec = spec
        self.layers: list[LowRankLayer | DenseLayer] = []
        rng = np.random.RandomState(spec.seed % 2**32)  # a frozen bit stream (NumPy's legacy policy)
        for decoder in spec.decoders:
            deconvs = [(i, m) for i, m in enumerate(getattr(model, decoder)) if isinstance(m, nn.ConvTranspose2d)]
            for (index, layer), rank in zip(deconvs, spec.ranks):
                name = f"{decoder}.{index}"
                if spec.method == "full":
                    self.layers.append(DenseLayer(f"{name}.weight", tuple(layer.weight.shape)))
                    if layer.bias is not None:  # every synthesis layer has one
                        self.layers.append(DenseLayer(f"{name}.bias", tuple(layer.bias.shape)))
                elif rank:
                    in_ch, out_ch, k, _ = layer.weight.shape
                    down = rng.standard_normal((rank, out_ch * k * k)) / np.sqrt(out_ch * k * k)
                    self.layers.append(LowRankLayer(f"{name}.weight", (in_ch, out_ch, k, k), rank,
                                                    torch.from_numpy(down).float()))
        self.size = sum(layer.size for layer in self.layers)

    def weights(self, model: ScaleSpaceFlow, values: Tensor) -> dict[str, Tensor]:
        """Adapted synthesis weights for deviations `values` (float, differentiable)."""
        params = dict(model.named_parameters())
        adapted, offset = {}, 0
        for layer in self.layers:
            base = params[layer.name]
            adapted[layer.name] = base + layer.delta(values[offset : offset + layer.size]).to(base.device)
            offset += layer.size
        return adapted

    def seeded_tensors(self) -> list[Tensor]:
        """The random starts a receiver keeps for this layout (memory accounting)."""
        return [layer.initial_down for layer in self.layers if isinstance(layer, LowRankLayer)]

    def dequantize(self, symbols: Tensor) -> Tensor:
        return symbols.to(torch.float32) * self.spec.bin_width


def adapted_weights(model: ScaleSpaceFlow, layout: AdapterLayout, symbols: Tensor) -> SynthesisWeights:
    """The decoder weights an adapter's symbols stand for, computed on the CPU at both ends."""
    if symbols.shape != (layout.size,):
        raise ValueError(f"adapter has {symbols.numel()} symbols, the layout needs {layout.size}")
    with torch.no_grad():
        return layout.weights(model, layout.dequantize(symbols.cpu()))
