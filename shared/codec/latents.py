"""Entropy coding of latents with entropy parameters that are identical on every device.

CompressAI picks each symbol's CDF by comparing the hyperprior's float scales against a table
(`GaussianConditional.build_indexes`). A GPU encoder and a CPU decoder, or two thread counts,
compute those scales with different rounding, pick different CDFs near a table boundary, and
the rANS decoder silently falls out of step (CompressAI issues #279, #309, #235). Here the
hyper-synthesis transforms that produce scales and means run in float64 on the CPU at both
ends, so a disagreement would need two results within ~1e-13 of a table boundary; and each
frame carries a CRC32C of its quantized symbols, so a desync is detected, never shown.
"""

from __future__ import annotations

import copy
import math

import crc32c
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

from adaptcast.shared.codec.ssf import Hyperprior


def _table_lists(cdf: Tensor, lengths: Tensor, offsets: Tensor) -> tuple[list[list[int]], list[int], list[int]]:
    return cdf.tolist(), lengths.reshape(-1).int().tolist(), offsets.reshape(-1).int().tolist()


def latent_shape(frame_h: int, frame_w: int) -> tuple[int, int]:
    """Spatial size of a latent y for a padded frame (four stride-2 layers)."""
    return math.ceil(frame_h / 16), math.ceil(frame_w / 16)


def hyper_shape(y_h: int, y_w: int) -> tuple[int, int]:
    """Spatial size of a hyper-latent z for a latent (three stride-2 layers)."""
    return math.ceil(y_h / 8), math.ceil(y_w / 8)


class LatentCoder:
    """Codes the latents of one hyperprior (image, motion or residual) to and from rANS.

    Holds float64 CPU copies of the hyper-synthesis transforms and the CDF tables as Python
    lists, prepared once, because they are used for every frame. The hyperprior itself is
    never adapted, so these copies stay valid for the life of the model.
    """

    def __init__(self, hyperprior: Hyperprior) -> None:
        self.hyper_encoder = hyperprior.hyper_encoder
        self.scale_net = copy.deepcopy(hyperprior.hyper_decoder_scale).to("cpu", torch.float64).eval()
        self.mean_net = copy.deepcopy(hyperprior.hyper_decoder_mean).to("cpu", torch.float64).eval()
        bottleneck = hyperprior.entropy_bottleneck
        conditional = hyperprior.gaussian_conditional
        self.medians = bottleneck.quantiles[:, 0, 1].detach().to("cpu", torch.float64).reshape(1, -1, 1, 1)
        self.z_channels = self.medians.shape[1]
        self.z_tables = _table_lists(bottleneck._quantized_cdf, bottleneck._cdf_length, bottleneck._offset)
        self.y_tables = _table_lists(conditional._quantized_cdf, conditional._cdf_length, conditional._offset)
        # build_indexes counts the table entries (all but the last) at or above each scale;
        # searchsorted counts those below it: the same index, in float64 for both ends.
        self.scale_bounds = conditional.scale_table[:-1].detach().to("cpu", torch.float64).contiguous()

    def _entropy_parameters(self, z_hat: Tensor, y_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        h, w = y_size
        with torch.no_grad():
            scales = self.scale_net(z_hat)[..., :h, :w]
            means = self.mean_net(z_hat)[..., :h, :w]
        indexes = torch.searchsorted(self.scale_bounds, scales.contiguous().reshape(-1)).int()
        return indexes, means

    def _z_indexes(self, z_h: int, z_w: int) -> list[int]:
        return torch.arange(self.z_channels).repeat_interleave(z_h * z_w).tolist()

    def encode(self, y: Tensor, encoder: BufferedRansEncoder, symbols: list[Tensor]) -> Tensor:
        """Queue y (and its hyper-latent) on `encoder`; return y_hat on y's device.

        The quantized symbols are appended to `symbols` for the frame's checksum.
        """
        with torch.no_grad():
            z = self.hyper_encoder(y)
        z_symbols = torch.round(z.to("cpu", torch.float64) - self.medians).int()
        encoder.encode_with_indexes(z_symbols.reshape(-1).tolist(), self._z_indexes(*z.shape[-2:]), *self.z_tables)
        indexes, means = self._entropy_parameters(z_symbols + self.medians, (y.shape[-2], y.shape[-1]))
        y_symbols = torch.round(y.to("cpu", torch.float64) - means).int()
        encoder.encode_with_indexes(y_symbols.reshape(-1).tolist(), indexes.tolist(), *self.y_tables)
        symbols += [z_symbols, y_symbols]
        return (y_symbols + means).to(y.device, torch.float32)

    def decode(
        self, decoder: RansDecoder, y_size: tuple[int, int], device: torch.device, symbols: list[Tensor]
    ) -> Tensor:
        """Read the next latent of `y_size` from `decoder`; return y_hat on `device`."""
        z_h, z_w = hyper_shape(*y_size)
        z_flat = decoder.decode_stream(self._z_indexes(z_h, z_w), *self.z_tables)
        z_symbols = torch.tensor(z_flat, dtype=torch.int32).reshape(1, self.z_channels, z_h, z_w)
        indexes, means = self._entropy_parameters(z_symbols + self.medians, y_size)
        y_flat = decoder.decode_stream(indexes.tolist(), *self.y_tables)
        y_symbols = torch.tensor(y_flat, dtype=torch.int32).reshape(means.shape)
        symbols += [z_symbols, y_symbols]
        return (y_symbols + means).to(device, torch.float32)


def symbols_checksum(symbols: list[Tensor]) -> int:
    """CRC32C of a frame's quantized symbols, in coding order."""
    value = 0
    for tensor in symbols:
        value = crc32c.crc32c(tensor.to(torch.int32).contiguous().numpy().tobytes(), value)
    return value
