"""The rate-distortion loss that base-model training and adapter fitting both minimise.

It reads a model's output (reconstructions and likelihoods), never the model, so that it sits
below the models as CompressAI's `compressai/losses` does, and adapter fitting needs nothing
of the base-model trainer.
"""

from __future__ import annotations

import functools
import operator

import torch
from torch import Tensor

Likelihoods = dict[str, dict[str, Tensor]]
"""One coded frame's likelihoods: per codec (image, motion, residual), per latent."""


def frame_bits(likelihoods: Likelihoods) -> Tensor:
    """Bits of one coded frame, per batch element."""
    return -_total([torch.log2(lik).sum(dim=(1, 2, 3)) for part in likelihoods.values() for lik in part.values()])


def rate_distortion(
    x_hat: list[Tensor], likelihoods: list[Likelihoods], frames: list[Tensor], lmbda: float,
    extra_bits: Tensor | float = 0.0,
) -> dict[str, Tensor]:
    """Loss = lmbda * 255^2 * MSE + bits per pixel, both averaged over the GOP's frames.

    `x_hat` and `likelihoods` are a model's output for `frames` (`ScaleSpaceFlow.forward`);
    `extra_bits` are what else the stream pays for them (an adapter being fitted).
    """
    batch, _, height, width = frames[0].shape
    pixels = batch * height * width * len(frames)
    bits = extra_bits + _total([frame_bits(frame).sum() for frame in likelihoods])
    mse = torch.stack([torch.mean((decoded - x) ** 2) for decoded, x in zip(x_hat, frames, strict=True)]).mean()
    bpp = bits / pixels
    return {"loss": lmbda * 255**2 * mse + bpp, "mse": mse, "bpp": bpp}


def _total(terms: list[Tensor]) -> Tensor:
    """The sum of `terms`, added in order (as Python's sum, which types its result as int | Tensor)."""
    return functools.reduce(operator.add, terms)
