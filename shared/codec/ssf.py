"""Scale-Space Flow (Agustsson et al., CVPR 2020) with configurable channel widths.

The module tree and parameter names follow `compressai.models.video.ScaleSpaceFlow`, so at
CompressAI's widths (128/192/192) its `ssf2020` state dicts load unchanged. Narrower widths give
a variant of the same architecture that a 2-core edge box or station can run in real time.

Only the training forward pass lives here. Entropy coding is in `shared.codec.latents`, which
computes every entropy parameter in a device-independent way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import QReLU
from compressai.models.base import CompressionModel
from compressai.models.utils import conv, deconv, gaussian_kernel1d, meshgrid2d
from compressai.ops import quantize_ste
from torch import Tensor, nn

#: Frames are padded to a multiple of this: the scale-space volume halves the frame 4 times.
FRAME_MULTIPLE = 16


@dataclass(frozen=True)
class SSFWidths:
    """Channel widths of the three autoencoders and their hyperpriors."""

    mid: int = 128
    """Hidden channels of the image, motion and residual encoders and decoders."""
    latent: int = 192
    """Channels of each latent y."""
    hyper: int = 192
    """Channels of the hyperprior transforms and of each hyper-latent z."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or not 1 <= value <= 1024:
                raise ValueError(f"width {name} must be an integer in 1..1024, got {value!r}")


SynthesisWeights = Mapping[str, Tensor]
"""Replacement weights (and biases) for synthesis layers, keyed by parameter name
(`img_decoder.0.weight`, `img_decoder.0.bias`)."""


def _weights_of(weights: SynthesisWeights | None, decoder: str) -> dict[str, Tensor] | None:
    if not weights:
        return None
    prefix = decoder + "."
    return {name[len(prefix):]: value for name, value in weights.items() if name.startswith(prefix)}


#: CompressAI's own widths: the ones its published ssf2020 weights use.
COMPRESSAI_WIDTHS = SSFWidths()


def separable_gaussian_blur(x: Tensor, kernel: Tensor) -> Tensor:
    """CompressAI's `gaussian_blur` (replicate padding, per channel), as two 1-D passes.

    The 2-D kernel is the outer product of `kernel` with itself, so the result is the same up
    to float rounding, at 2k instead of k^2 multiplies a pixel; channels are folded into the
    batch because single-channel convolutions run faster on CPUs than grouped ones. The blur
    is a large share of a P-frame's decoding time on a CPU.
    """
    n, c, h, w = x.shape
    size = kernel.numel()
    pad = size // 2
    x = F.pad(x.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, size))
    return F.conv2d(x, kernel.view(1, 1, size, 1)).reshape(n, c, h, w)


def _qrelu(x: Tensor) -> Tensor:
    return QReLU.apply(x, 8, 100)


def _strided_stack(layer: Callable[..., nn.Module], channels: list[int]) -> list[nn.Module]:
    """5x5 stride-2 layers between consecutive channel counts, with ReLUs between them.

    The layers sit at indexes 0, 2, 4..., as in CompressAI, so state dicts keep their keys.
    """
    layers: list[nn.Module] = []
    for planes_in, planes_out in zip(channels, channels[1:]):
        if layers:
            layers.append(nn.ReLU(inplace=True))
        layers.append(layer(planes_in, planes_out, kernel_size=5, stride=2))
    return layers


class AnalysisTransform(nn.Sequential):
    """Four stride-2 convolutions: frame (or frame pair) to latent."""

    def __init__(self, in_planes: int, mid_planes: int, out_planes: int) -> None:
        super().__init__(*_strided_stack(conv, [in_planes, mid_planes, mid_planes, mid_planes, out_planes]))


class SynthesisTransform(nn.Sequential):
    """Four stride-2 transposed convolutions: latent to frame, flow or residual.

    These are the layers that instance adaptation changes; nothing that computes entropy
    parameters is one of them. `weights` replaces some of the layers' weights and biases for
    one call (keyed `"<index>.weight"`, `"<index>.bias"`), so one frozen model serves every
    stream's adapter without being modified.
    """

    def __init__(self, out_planes: int, in_planes: int, mid_planes: int) -> None:
        super().__init__(*_strided_stack(deconv, [in_planes, mid_planes, mid_planes, mid_planes, out_planes]))

    def forward(self, x: Tensor, weights: Mapping[str, Tensor] | None = None) -> Tensor:
        for index, layer in enumerate(self):
            if weights and isinstance(layer, nn.ConvTranspose2d):
                weight = weights.get(f"{index}.weight", layer.weight)
                bias = weights.get(f"{index}.bias", layer.bias)
                # torch types _ConvNd.padding as str | tuple; a transposed convolution's is always a tuple
                padding = cast(tuple[int, ...], layer.padding)
                x = F.conv_transpose2d(x, weight, bias, layer.stride, padding, layer.output_padding)
            else:
                x = layer(x)
        return x


class HyperAnalysis(nn.Sequential):
    def __init__(self, in_planes: int, mid_planes: int) -> None:
        super().__init__(*_strided_stack(conv, [in_planes, mid_planes, mid_planes, mid_planes]))


class HyperSynthesis(nn.Sequential):
    """Hyper-latent to the means of the latent's Gaussians."""

    def __init__(self, mid_planes: int, out_planes: int) -> None:
        super().__init__(*_strided_stack(deconv, [mid_planes, mid_planes, mid_planes, out_planes]))


class HyperSynthesisQReLU(nn.Module):
    """Hyper-latent to the scales of the latent's Gaussians (bounded by quantized ReLUs)."""

    def __init__(self, mid_planes: int, out_planes: int) -> None:
        super().__init__()
        self.deconv1 = deconv(mid_planes, mid_planes, kernel_size=5, stride=2)
        self.deconv2 = deconv(mid_planes, mid_planes, kernel_size=5, stride=2)
        self.deconv3 = deconv(mid_planes, out_planes, kernel_size=5, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = _qrelu(self.deconv1(x))
        x = _qrelu(self.deconv2(x))
        return _qrelu(self.deconv3(x))


class Hyperprior(nn.Module):
    """Mean-scale hyperprior of one latent.

    Latents of any size are accepted: the hyper-synthesis output is cropped back to the
    latent's size, so frames need only be padded to a multiple of 16, not 128.
    """

    def __init__(self, planes: int, mid_planes: int) -> None:
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(mid_planes)
        self.hyper_encoder = HyperAnalysis(planes, mid_planes)
        self.hyper_decoder_mean = HyperSynthesis(mid_planes, planes)
        self.hyper_decoder_scale = HyperSynthesisQReLU(mid_planes, planes)
        self.gaussian_conditional = GaussianConditional(None)

    def entropy_parameters(self, z_hat: Tensor, size: torch.Size) -> tuple[Tensor, Tensor]:
        """Scales and means of the latent, cropped to the latent's spatial `size`."""
        h, w = size
        scales = self.hyper_decoder_scale(z_hat)[..., :h, :w]
        means = self.hyper_decoder_mean(z_hat)[..., :h, :w]
        return scales, means

    def forward(self, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.hyper_encoder(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self.entropy_parameters(z_hat, y.shape[-2:])
        _, y_likelihoods = self.gaussian_conditional(y, scales, means)
        y_hat = quantize_ste(y - means) + means
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}


class RateGains(nn.Module):
    """Per-channel gains of one latent at each trained rate point, and their inverses (Cui et
    al., "Asymmetric Gained Deep Image Compression With Continuous Rate Adaptation", CVPR 2021).

    The encoder multiplies its latent by a gain before quantization and the decoder its decoded
    latent by the inverse gain: a larger gain is a finer quantizer. A quality index between two
    rate points interpolates their gains geometrically (linearly in the logarithms stored
    here), so one model covers the whole rate range continuously. The gains sit outside the
    hyperprior: the entropy parameters of the gained latent are computed exactly as before.
    """

    def __init__(self, lambdas: list[float], channels: int, init_lambda: float | None = None) -> None:
        super().__init__()
        if len(lambdas) < 2 or list(lambdas) != sorted(lambdas) or lambdas[0] <= 0:
            raise ValueError(f"rate points need two or more increasing positive lambdas, got {lambdas}")
        # A quantizer's step at the rate-distortion optimum shrinks as 1/sqrt(lambda); starting
        # there lets a single-rate model (trained at init_lambda) begin as a fair variable-rate one.
        reference = init_lambda or lambdas[len(lambdas) // 2]
        log_gain = 0.5 * torch.log(torch.tensor(lambdas, dtype=torch.float32) / reference)
        self.log_gain = nn.Parameter(log_gain.unsqueeze(1).repeat(1, channels))
        self.log_inverse_gain = nn.Parameter(-self.log_gain.detach().clone())

    @property
    def levels(self) -> int:
        return self.log_gain.shape[0]

    def _at(self, table: Tensor, quality: Tensor) -> Tensor:
        return torch.exp(interpolate_levels(table, quality))[..., None, None]

    def gain(self, quality: Tensor) -> Tensor:
        """Gains for a batch of quality indexes (shape B), as B x C x 1 x 1."""
        return self._at(self.log_gain, quality)

    def inverse_gain(self, quality: Tensor) -> Tensor:
        return self._at(self.log_inverse_gain, quality)


def interpolate_levels(table: Tensor, quality: Tensor) -> Tensor:
    """The rows of `table` (one per rate point) at fractional quality indexes (shape B), linear
    between neighbouring rate points and clamped to the range: for a table of logarithms, the
    geometric interpolation that gains and lambdas share."""
    levels = table.shape[0]
    quality = quality.to(table.device, table.dtype).reshape(-1).clamp(0, levels - 1)
    low = quality.floor().long().clamp(max=levels - 2)
    t = (quality - low).reshape(-1, *[1] * (table.dim() - 1))
    return table[low] * (1 - t) + table[low + 1] * t


def interpolate_lambda(lambdas: list[float], quality: float) -> float:
    """The rate-distortion trade-off at a quality index: geometric between rate points, as the gains."""
    logs = torch.log(torch.tensor(lambdas, dtype=torch.float64))
    return math.exp(float(interpolate_levels(logs, torch.tensor([float(quality)], dtype=torch.float64))[0]))


class ScaleSpaceFlow(CompressionModel):
    """Scale-Space Flow: an image codec for I-frames, a motion codec and a residual codec.

    `forward` is the differentiable training pass (additive-noise rates, straight-through
    latents); the reconstruction helpers (`decode_keyframe`, `decode_inter`) are shared by the
    encoder and the decoder so that both compute the same frame from the same latents.

    With `rate_lambdas` (two or more), the model is variable-rate: each latent has `RateGains`,
    and every coding call takes a quality index in 0..len(rate_lambdas)-1. Without, it is a
    single-rate model whose state dict is CompressAI's.
    """

    def __init__(
        self,
        widths: SSFWidths = COMPRESSAI_WIDTHS,
        num_levels: int = 5,
        sigma0: float = 1.5,
        scale_field_shift: float = 1.0,
        rate_lambdas: list[float] | None = None,
        init_lambda: float | None = None,
    ) -> None:
        super().__init__()
        self.widths = widths
        self.rate_lambdas = list(rate_lambdas or [])
        mid, latent, hyper = widths.mid, widths.latent, widths.hyper

        self.img_encoder = AnalysisTransform(3, mid, latent)
        self.img_decoder = SynthesisTransform(3, latent, mid)
        self.img_hyperprior = Hyperprior(latent, hyper)

        self.res_encoder = AnalysisTransform(3, mid, latent)
        self.res_decoder = SynthesisTransform(3, 2 * latent, mid)
        self.res_hyperprior = Hyperprior(latent, hyper)

        self.motion_encoder = AnalysisTransform(2 * 3, mid, latent)
        self.motion_decoder = SynthesisTransform(2 + 1, latent, mid)
        self.motion_hyperprior = Hyperprior(latent, hyper)

        if self.rate_lambdas:
            self.img_gains = RateGains(self.rate_lambdas, latent, init_lambda)
            self.motion_gains = RateGains(self.rate_lambdas, latent, init_lambda)
            self.res_gains = RateGains(self.rate_lambdas, latent, init_lambda)

        self.sigma0 = sigma0
        self.num_levels = num_levels
        self.scale_field_shift = scale_field_shift

    # -- rate ------------------------------------------------------------------------------

    def gained(self, latent: str, y: Tensor, quality: Tensor | float | None) -> Tensor:
        """The encoder's latent `y` ("img", "motion" or "res") scaled for the quality index;
        unchanged in a single-rate model."""
        if not self.rate_lambdas:
            return y
        return y * getattr(self, f"{latent}_gains").gain(torch.as_tensor(quality, dtype=y.dtype))

    def ungained(self, latent: str, y_hat: Tensor, quality: Tensor | float | None) -> Tensor:
        """A decoded latent scaled back for the synthesis transforms: `gained`'s inverse."""
        if not self.rate_lambdas:
            return y_hat
        return y_hat * getattr(self, f"{latent}_gains").inverse_gain(torch.as_tensor(quality, dtype=y_hat.dtype))

    # -- training pass -------------------------------------------------------------------

    def forward(
        self, frames: list[Tensor], weights: SynthesisWeights | None = None, quality: Tensor | float | None = None
    ) -> dict[str, list[Any]]:
        """Code a GOP (an I-frame then P-frames) with noise-relaxed quantization.

        `weights` replaces synthesis weights (an adapter being fitted); gradients flow into them.
        `quality` is a variable-rate model's quality index (one, or one per batch element).
        """
        coded = list(self.code_gop(frames, weights, quality))
        return {"x_hat": [x_hat for x_hat, _ in coded], "likelihoods": [lik for _, lik in coded]}

    def code_gop(
        self,
        frames: list[Tensor],
        weights: SynthesisWeights | None = None,
        quality: Tensor | float | None = None,
        detach_references: bool = False,
    ) -> Iterator[tuple[Tensor, dict[str, dict[str, Tensor]]]]:
        """`forward` one frame at a time: each frame's reconstruction and likelihoods.

        No gradient flows through the I-frame into the P-frames (as in the paper). With
        `detach_references`, none flows through any reference, so a caller can back-propagate
        each frame's loss as it comes and hold one frame's graph at a time, whatever the GOP's length.
        """
        if not frames:
            raise ValueError("forward needs at least one frame")
        y = self.gained("img", self.img_encoder(frames[0]), quality)
        y_hat, likelihoods = self.img_hyperprior(y)
        x_ref = self.decode_keyframe(self.ungained("img", y_hat, quality), weights)
        yield x_ref, {"keyframe": likelihoods}
        x_ref = x_ref.detach()
        for x_cur in frames[1:]:
            y_motion = self.gained("motion", self.motion_encoder(torch.cat((x_cur, x_ref), dim=1)), quality)
            y_motion_hat, motion_likelihoods = self.motion_hyperprior(y_motion)
            y_motion_hat = self.ungained("motion", y_motion_hat, quality)
            x_pred = self.predict(x_ref, y_motion_hat, weights)
            y_res = self.gained("res", self.res_encoder(x_cur - x_pred), quality)
            y_res_hat, res_likelihoods = self.res_hyperprior(y_res)
            x_ref = self.decode_inter(x_pred, y_motion_hat, self.ungained("res", y_res_hat, quality), weights)
            yield x_ref, {"motion": motion_likelihoods, "residual": res_likelihoods}
            if detach_references:
                x_ref = x_ref.detach()

    # -- reconstruction, shared by encoder and decoder -----------------------------------

    def decode_keyframe(self, y_hat: Tensor, weights: SynthesisWeights | None = None) -> Tensor:
        return self.img_decoder(y_hat, _weights_of(weights, "img_decoder"))

    def predict(self, x_ref: Tensor, y_motion_hat: Tensor, weights: SynthesisWeights | None = None) -> Tensor:
        """Warp the reference through the decoded scale-space flow."""
        flow, scale_field = self.motion_decoder(y_motion_hat, _weights_of(weights, "motion_decoder")).chunk(2, dim=1)
        volume = self.gaussian_volume(x_ref, self.sigma0, self.num_levels)
        return self.warp_volume(volume, flow, scale_field)

    def decode_inter(
        self, x_pred: Tensor, y_motion_hat: Tensor, y_res_hat: Tensor, weights: SynthesisWeights | None = None
    ) -> Tensor:
        latents = torch.cat((y_res_hat, y_motion_hat), dim=1)
        return x_pred + self.res_decoder(latents, _weights_of(weights, "res_decoder"))

    @staticmethod
    def gaussian_volume(x: Tensor, sigma: float, num_levels: int) -> Tensor:
        """The reference blurred at `num_levels` scales, stacked along a new depth axis."""
        k = 2 * int(math.ceil(3 * sigma)) + 1
        kernel = gaussian_kernel1d(k, sigma, device=x.device, dtype=x.dtype)
        volume = [x.unsqueeze(2)]
        x = separable_gaussian_blur(x, kernel)
        volume.append(x.unsqueeze(2))
        for i in range(1, num_levels):
            x = F.avg_pool2d(x, kernel_size=(2, 2), stride=(2, 2))
            x = separable_gaussian_blur(x, kernel)
            interp = x
            for _ in range(i):
                interp = F.interpolate(interp, scale_factor=2, mode="bilinear", align_corners=False)
            volume.append(interp.unsqueeze(2))
        return torch.cat(volume, dim=2)

    @staticmethod
    def warp_volume(volume: Tensor, flow: Tensor, scale_field: Tensor) -> Tensor:
        n, c, _, h, w = volume.size()
        grid = meshgrid2d(n, c, h, w, volume.device)
        update_grid = grid + flow.permute(0, 2, 3, 1).float()
        update_scale = scale_field.permute(0, 2, 3, 1).float()
        volume_grid = torch.cat((update_grid, update_scale), dim=-1).unsqueeze(1)
        out = F.grid_sample(volume.float(), volume_grid, padding_mode="border", align_corners=False)
        return out.squeeze(2)

    def synthesis_transforms(self) -> dict[str, SynthesisTransform]:
        """The three decoders that instance adaptation may change, by name."""
        return {
            "img_decoder": self.img_decoder,
            "motion_decoder": self.motion_decoder,
            "res_decoder": self.res_decoder,
        }

    def hyperpriors(self) -> dict[str, Hyperprior]:
        return {
            "img": self.img_hyperprior,
            "motion": self.motion_hyperprior,
            "res": self.res_hyperprior,
        }
