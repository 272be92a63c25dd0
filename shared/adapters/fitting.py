"""Fitting an adapter to one segment: only the adapter trains, the base model stays frozen.

The loss is the one the stream will pay: lambda * 255^2 * MSE + (latent bits + adapter bits)
per pixel. The decoder runs with the quantized adapter (straight-through), so the fitter sees
what the receiver will rebuild; the adapter's bits are estimated from the spike-and-slab prior's
density at the unquantized values, whose pull towards zero keeps weakly useful parameters at
exactly zero (the bits of the quantized symbols themselves have no gradient at zero, and
fitting against them left 6x more non-zero symbols for a worse rate-distortion cost:
docs/adapters.md). The fit stops at a step budget or a time budget, whichever ends first.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from adaptcast.shared.adapters.lora import AdapterLayout, AdapterSpec, adapted_weights
from adaptcast.shared.adapters.prior import SpikeSlabPrior
from adaptcast.shared.adapters.update import AdapterUpdate, encode_update
from adaptcast.shared.codec.defaults import DEFAULT_FIT_STEPS
from adaptcast.shared.codec.loss import rate_distortion
from adaptcast.shared.codec.ssf import ScaleSpaceFlow, SynthesisWeights


@dataclass(frozen=True)
class FitBudget:
    steps: int = DEFAULT_FIT_STEPS
    seconds: float | None = None
    """Wall-clock limit; the fit stops at whichever limit comes first."""
    lr: float = 1e-3
    gop: int = 3
    """Frames per step: a random run of the segment's frames, coded as I, P, P..."""
    crop: int | None = 128
    """Side of the random square crop each step trains on (None: whole frames)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.gop < 1 or (self.crop is not None and self.crop % 16):
            raise ValueError("steps >= 0, lr > 0, gop >= 1 and crop a multiple of 16 are required")


@dataclass
class FitResult:
    symbols: Tensor
    """int32 symbols of the fitted adapter (deviations from its seeded start, in bins)."""
    steps: int
    seconds: float
    saving_bits: float | None = None
    """When the fit was judged: the rate-distortion cost (in bits) the new version is estimated
    to save on the frames it will code, against the version in force."""
    update_bits: int | None = None
    """When the fit was judged: the bits of the update that would carry it."""


def fit_adapter(
    model: ScaleSpaceFlow,
    layout: AdapterLayout,
    frames: list[Tensor],
    lmbda: float,
    budget: FitBudget,
    *,
    start: Tensor | None = None,
    seed: int = 0,
    quality: float = 0.0,
) -> FitResult:
    """Fit `layout`'s adapter to `frames` (a segment, padded, on the model's device).

    Each step trains on a random run of `budget.gop` frames, cropped to `budget.crop`: many
    cheap steps instead of a few whole-segment ones, to fit a real-time budget. `start` is the previous
    segment's symbols (a warm start: a surveillance scene changes slowly, and an increment
    from there is cheap); None starts from the untrained adapter. `quality` is the index a
    variable-rate model codes the frames at (and `lmbda` its trade-off there).
    """
    started = time.perf_counter()
    rng = random.Random(seed)
    bin_width = layout.spec.bin_width
    prior = SpikeSlabPrior(bin_width=bin_width)
    device = frames[0].device
    initial = torch.zeros(layout.size) if start is None else start.float() * bin_width
    values = torch.nn.Parameter(initial.to(device))
    optimizer = torch.optim.Adam([values], lr=budget.lr)
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()  # noise-relaxed rates, as in training
    _, _, height, width = frames[0].shape
    # The adapter's bits are paid once for the whole segment; a step sees only part of it.
    sample = _sample(frames, budget, random.Random(0))
    pixel_share = sample[0].shape[-1] * sample[0].shape[-2] * len(sample) / (height * width * len(frames))
    steps = 0
    try:
        while steps < budget.steps:
            if budget.seconds is not None and time.perf_counter() - started >= budget.seconds:
                break
            quantized = values + (torch.round(values / bin_width) * bin_width - values).detach()
            weights = layout.weights(model, quantized)
            gop = _sample(frames, budget, rng)
            out = model(gop, weights, quality)
            terms = rate_distortion(out["x_hat"], out["likelihoods"], gop, lmbda,
                                    extra_bits=prior.density_bits(values) * pixel_share)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            steps += 1
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
        model.train(was_training)
    symbols = torch.round(values.detach() / bin_width).to("cpu", torch.int32)
    return FitResult(symbols, steps, time.perf_counter() - started)


def _sample(frames: list[Tensor], budget: FitBudget, rng: random.Random) -> list[Tensor]:
    """A random run of frames from the segment, randomly cropped."""
    gop = min(budget.gop, len(frames))
    start = rng.randrange(len(frames) - gop + 1)
    run = frames[start : start + gop]
    _, _, height, width = run[0].shape
    if budget.crop is None or (budget.crop >= height and budget.crop >= width):
        return run
    crop_h, crop_w = min(budget.crop, height), min(budget.crop, width)
    top, left = rng.randrange(0, height - crop_h + 1, 16), rng.randrange(0, width - crop_w + 1, 16)
    return [f[..., top : top + crop_h, left : left + crop_w] for f in run]


class StreamAdapter:
    """The sending end of one stream's adapter: fits segments, numbers versions, and emits
    each version as an increment on the last one, or as a full snapshot on the first version
    and every `snapshot_every` versions (so a receiver that lost one recovers soon).
    """

    def __init__(
        self,
        stream: str,
        model: ScaleSpaceFlow,
        model_sha256: str,
        spec: AdapterSpec,
        lmbda: float,
        budget: FitBudget,
        *,
        snapshot_every: int = 10,
        quality: float = 0.0,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, got {snapshot_every}")
        self.stream = stream
        self.model = model
        self.model_sha256 = model_sha256
        self.layout = AdapterLayout(model, spec)
        self.lmbda = lmbda
        self.quality = quality
        """A variable-rate model's quality index the stream is coded at; whoever changes it (rate
        control, between segments) changes `lmbda` to the model's trade-off there."""
        self.budget = budget
        self.snapshot_every = snapshot_every
        self.version = 0
        """The latest fitted version; 0 until the first fit (the base model)."""
        self.symbols: Tensor | None = None
        self.weights: SynthesisWeights | None = None

    def fit(self, frames: list[Tensor], frames_served: int | None = None) -> tuple[bytes | None, FitResult]:
        """Fit a new version on `frames`; return its coded update and the fit's figures.

        With `frames_served` (how many frames the new version is expected to code before the
        next one), the new version is kept only when its estimated saving on those frames
        exceeds its update's bits; otherwise the version in force stays and no update is
        returned (None). A static scene whose frames are mostly skipped gains too little from
        a new adapter to pay for it.
        """
        result = fit_adapter(self.model, self.layout, frames, self.lmbda, self.budget, start=self.symbols,
                             seed=self.version, quality=self.quality)
        version = self.version + 1
        # the symbols of the version this one is coded as an increment of; None: a snapshot, which decodes alone
        parent = self.symbols if self.symbols is not None and (version - 1) % self.snapshot_every else None
        update = encode_update(AdapterUpdate(
            stream=self.stream,
            version=version,
            parent=0 if parent is None else version - 1,
            model_sha256=self.model_sha256,
            spec=self.layout.spec,
            symbols=result.symbols if parent is None else result.symbols - parent,
        ))
        weights = adapted_weights(self.model, self.layout, result.symbols)
        if frames_served is not None:
            _, _, height, width = frames[0].shape
            saving_per_pixel = self.rd_cost(frames, self.weights) - self.rd_cost(frames, weights)
            result.update_bits = len(update) * 8
            result.saving_bits = saving_per_pixel * height * width * frames_served
            if result.saving_bits <= result.update_bits:
                return None, result
        self.version, self.symbols, self.weights = version, result.symbols, weights
        return update, result

    @torch.no_grad()
    def rd_cost(self, frames: list[Tensor], weights: SynthesisWeights | None) -> float:
        """The rate-distortion cost per pixel (lambda * 255^2 * MSE + bpp) of the segment's first
        GOP decoded with `weights` (None: the base model), with quantized latents: the rates a
        real coder would pay."""
        was_training = self.model.training
        self.model.eval()
        try:
            gop = frames[: self.budget.gop]
            out = self.model(gop, weights, self.quality)
            return float(rate_distortion(out["x_hat"], out["likelihoods"], gop, self.lmbda)["loss"])
        finally:
            self.model.train(was_training)

    def snapshot(self) -> bytes | None:
        """The latest version as a full snapshot, for a receiver that starts afresh (a
        reconnection, a keyframe request); None before the first fit."""
        if self.symbols is None:
            return None
        return encode_update(AdapterUpdate(self.stream, self.version, 0, self.model_sha256, self.layout.spec,
                                           self.symbols))
