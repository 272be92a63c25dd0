"""Frame-by-frame coding with a Scale-Space Flow model and real rANS strings.

The encoder reconstructs each frame exactly as the decoder will (same latents, same layers,
same order), and keeps that reconstruction as the next P-frame's reference.

Two tools for fixed cameras sit here. A P-frame whose coding does not pay for itself by the
model's own rate-distortion loss is skipped: the decoder shows the reference again. And a
background picture (coded once, rarely, with the base model's image decoder) can stand in for
the reference of a segment's first frame, so that segments need no I-frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

from adaptcast.shared.codec.bitstream import BackgroundRecord, FrameKind, FrameRecord
from adaptcast.shared.codec.latents import LatentCoder, hyper_shape, latent_shape, symbols_checksum
from adaptcast.shared.codec.rans import RANS_STATE_BYTES, guarded_string
from adaptcast.shared.codec.ssf import FRAME_MULTIPLE, Hyperprior, ScaleSpaceFlow, SynthesisWeights
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.frames import FrameSize, RgbFrame, padded_size, to_rgb, to_tensor

MAX_SYMBOL_BYTES = 7
"""More than one latent symbol can take in a rANS string: at most 16 bits for the symbol (no probability
is below 2^-16) and, for a value beyond its CDF, 4-bit bypass chunks for its count and its value (at
most 8 in all: the encoder handles values below 2^27), so 48 bits, rounded up with a byte to spare."""


class _FrameCodec:
    def __init__(self, model: ScaleSpaceFlow, size: FrameSize, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.size = size
        self.padded = padded_size(size, FRAME_MULTIPLE)
        self.device = device
        self.coders = {name: LatentCoder(hp) for name, hp in self.model.hyperpriors().items()}
        self.reference: Tensor | None = None
        """The last reconstruction (padded, on the device): the next P-frame's reference."""
        self.weights: SynthesisWeights | None = None
        """Adapted synthesis weights in force (None: the base model's). Changed only between
        segments, by whoever drives the codec."""
        self.quality = 0.0
        """A variable-rate model's quality index in force (ignored by a single-rate model); changed
        only between segments, like `weights`."""
        self.backgrounds: dict[int, Tensor] = {}
        """Decoded background pictures (padded, on the device) by index; at most
        MAX_BACKGROUNDS, the newest."""

    def start_from_background(self, index: int) -> None:
        """Make background `index` the reference, so that a segment starts with a P-frame."""
        self.reference = self.backgrounds[index]

    def keep_background(self, index: int, x_hat: Tensor) -> None:
        """Hold a decoded background under `index`, dropping the oldest beyond MAX_BACKGROUNDS."""
        self.backgrounds[index] = x_hat
        for old in sorted(self.backgrounds)[:-MAX_BACKGROUNDS]:
            del self.backgrounds[old]


MAX_BACKGROUNDS = 2
"""Backgrounds a codec keeps: the newest, and the one before for segments already under way."""


@dataclass(frozen=True)
class LatentRefinement:
    """Encoder-side refinement: a few gradient steps on each frame's latent (the image latent
    of an I-frame, the residual latent of a P-frame) against that frame's rate-distortion
    loss, before it is entropy-coded. The decoder needs nothing new."""

    lmbda: float
    steps: int = 10
    lr: float = 0.05


@dataclass(frozen=True)
class SkipDecision:
    """Skip a P-frame when showing the reference again costs less than coding it, by the loss
    the model was trained on: lambda * 255^2 * MSE + bits per pixel."""

    lmbda: float


class FrameEncoder(_FrameCodec):
    refinement: LatentRefinement | None = None
    skip: SkipDecision | None = None
    background_refinement: LatentRefinement | None = None
    """Refinement of background pictures: they are rare, so they can take many more steps (and a
    lower-distortion target) than frames."""
    _keyframe_latent: Tensor | None = None

    def _refine(
        self, refinement: LatentRefinement, y: Tensor, hyperprior: Hyperprior, decode: Callable[[Tensor], Tensor],
        x: Tensor,
    ) -> Tensor:
        was_training = hyperprior.training
        hyperprior.train()  # noise-relaxed rates, which have gradients
        try:
            # the relaxation's noise is seeded, so that the same input always gives the same stream
            with torch.enable_grad(), torch.random.fork_rng(devices=[y.device] if y.is_cuda else []):
                torch.manual_seed(0)
                y = y.detach().clone().requires_grad_(True)
                optimizer = torch.optim.Adam([y], lr=refinement.lr)
                for _ in range(refinement.steps):
                    y_hat, likelihoods = hyperprior(y)
                    bits = torch.stack([torch.log2(lik).sum() for lik in likelihoods.values()]).sum().neg()
                    mse = torch.mean((decode(y_hat) - x) ** 2)
                    loss = refinement.lmbda * 255**2 * mse + bits / (x.shape[-1] * x.shape[-2])
                    (y.grad,) = torch.autograd.grad(loss, [y])  # no gradients into the shared model
                    optimizer.step()
        finally:
            hyperprior.train(was_training)
        return y.detach()

    @torch.no_grad()
    def encode(self, rgb: RgbFrame, index: int, keyframe: bool) -> tuple[FrameRecord, RgbFrame]:
        """Code one frame; return its record and the reconstruction the decoder will show."""
        reference = self.reference
        if reference is None and not keyframe:
            raise ValueError("the first frame of a stream must be a keyframe")
        x = to_tensor(rgb, self.padded, self.device)
        encoder = BufferedRansEncoder()
        symbols: list[Tensor] = []
        model = self.model
        q = self.quality
        if keyframe:
            y = model.gained("img", model.img_encoder(x), q)
            if self.refinement:
                y = self._refine(self.refinement, y, model.img_hyperprior,
                                 lambda y_hat: model.decode_keyframe(model.ungained("img", y_hat, q), self.weights), x)
            y_hat = model.ungained("img", self.coders["img"].encode(y, encoder, symbols), q)
            x_hat = model.decode_keyframe(y_hat, self.weights)
            self._keyframe_latent = y_hat
        else:
            assert reference is not None  # checked above: only a keyframe may come first
            y_motion = model.gained("motion", model.motion_encoder(torch.cat((x, reference), dim=1)), q)
            y_motion_hat = model.ungained("motion", self.coders["motion"].encode(y_motion, encoder, symbols), q)
            x_pred = model.predict(reference, y_motion_hat, self.weights)
            y_res = model.gained("res", model.res_encoder(x - x_pred), q)

            def decode_residual(y_hat: Tensor) -> Tensor:
                return model.decode_inter(x_pred, y_motion_hat, model.ungained("res", y_hat, q), self.weights)

            if self.refinement:
                y_res = self._refine(self.refinement, y_res, model.res_hyperprior, decode_residual, x)
            x_hat = decode_residual(self.coders["res"].encode(y_res, encoder, symbols))
        string = encoder.flush()
        if reference is not None and not keyframe and self.skip and self._skipping_pays(self.skip, x, x_hat, reference,
                                                                                         string):
            return self.skip_frame(index)
        self.reference = x_hat
        kind = FrameKind.INTRA if keyframe else FrameKind.PREDICTED
        record = FrameRecord(index, kind, self.padded.height, self.padded.width, symbols_checksum(symbols), string)
        return record, to_rgb(x_hat, self.size)

    def _skipping_pays(self, skip: SkipDecision, x: Tensor, x_hat: Tensor, reference: Tensor, string: bytes) -> bool:
        """Whether showing the reference again costs less than the coded frame. Both records carry
        the same head, so the coded frame's extra rate is its string alone."""
        h, w = self.size.height, self.size.width
        x = x[..., :h, :w]
        coded = skip.lmbda * 255**2 * torch.mean((x_hat[..., :h, :w].clamp(0, 1) - x) ** 2) + len(string) * 8 / (h * w)
        skipped = skip.lmbda * 255**2 * torch.mean((reference[..., :h, :w].clamp(0, 1) - x) ** 2)
        return bool(skipped <= coded)

    def skip_frame(self, index: int) -> tuple[FrameRecord, RgbFrame]:
        """Skip a frame (because it does not pay, or unseen by an encoder that cannot keep up):
        its record, and the reference the decoder shows again."""
        if self.reference is None:
            raise ValueError("a frame can be skipped only after a reference")
        return (FrameRecord(index, FrameKind.SKIP, self.padded.height, self.padded.width, 0, b""),
                to_rgb(self.reference, self.size))

    @torch.no_grad()
    def encode_background(self, rgb: RgbFrame, index: int) -> tuple[BackgroundRecord, RgbFrame]:
        """Code a background picture with the base model's image codec; keep it under `index`
        for `start_from_background`; return its record and the picture the decoder will hold."""
        x = to_tensor(rgb, self.padded, self.device)
        model = self.model
        q = self.quality

        def decode_background(y_hat: Tensor) -> Tensor:
            return model.decode_keyframe(model.ungained("img", y_hat, q))

        y = model.gained("img", model.img_encoder(x), q)
        if self.background_refinement:
            y = self._refine(self.background_refinement, y, model.img_hyperprior, decode_background, x)
        encoder = BufferedRansEncoder()
        symbols: list[Tensor] = []
        x_hat = decode_background(self.coders["img"].encode(y, encoder, symbols))
        self.keep_background(index, x_hat)
        record = BackgroundRecord(index, self.padded.height, self.padded.width, symbols_checksum(symbols),
                                  encoder.flush(), self.quality)
        return record, to_rgb(x_hat, self.size)

    @torch.no_grad()
    def reconstruct_keyframe(self, weights: SynthesisWeights | None) -> RgbFrame:
        """The last I-frame as a decoder holding `weights` would show it: the sender compares the
        base model's picture with the adapter's on the same latent, without coding the frame twice."""
        if self._keyframe_latent is None:
            raise ValueError("no keyframe has been coded yet")
        return to_rgb(self.model.decode_keyframe(self._keyframe_latent, weights), self.size)


class FrameDecoder(_FrameCodec):
    @torch.inference_mode()
    def decode(self, record: FrameRecord) -> RgbFrame:
        """Decode one frame; raise BitstreamError if it cannot be decoded exactly."""
        self._check_shape(record.height, record.width, f"frame {record.index}")
        reference = self.reference
        if not record.keyframe and reference is None:
            raise BitstreamError(f"frame {record.index}: P-frame without a reference")
        if record.kind != FrameKind.SKIP:
            reference = self.reference = self._decode_string(record, self.weights, self.quality,
                                                             f"frame {record.index}")
        assert reference is not None  # a skipped frame is no keyframe: checked above
        return to_rgb(reference, self.size)

    @torch.inference_mode()
    def decode_background(self, record: BackgroundRecord) -> None:
        """Decode a background picture (with the base model) and keep it; raise BitstreamError
        if it cannot be decoded exactly, keeping the backgrounds held before."""
        self._check_shape(record.height, record.width, f"background {record.index}")
        saved = self.reference
        try:
            self.keep_background(record.index, self._decode_string(record.as_frame(), None, record.quality,
                                                                    f"background {record.index}"))
        finally:
            self.reference = saved  # a background is no frame's reference until a segment starts from it

    def _check_shape(self, height: int, width: int, what: str) -> None:
        if (height, width) != (self.padded.height, self.padded.width):
            raise BitstreamError(f"{what}: coded at {width}x{height}, stream is {self.padded}")

    def _decode_string(self, record: FrameRecord, weights: SynthesisWeights | None, quality: float,
                       what: str) -> Tensor:
        """The reconstruction a frame's string codes; on a checksum mismatch the reference is
        dropped (the decoder is out of step) and BitstreamError raised."""
        string = self._checked_string(record, what)
        y_size = (self.padded.height // 16, self.padded.width // 16)
        decoder = RansDecoder()
        decoder.set_stream(string)
        symbols: list[Tensor] = []
        model, q = self.model, quality
        if record.keyframe:
            y_hat = model.ungained("img", self.coders["img"].decode(decoder, y_size, self.device, symbols), q)
            x_hat = model.decode_keyframe(y_hat, weights)
        else:
            y_motion_hat = model.ungained(
                "motion", self.coders["motion"].decode(decoder, y_size, self.device, symbols), q)
            x_pred = model.predict(self.reference, y_motion_hat, weights)
            y_res_hat = model.ungained("res", self.coders["res"].decode(decoder, y_size, self.device, symbols), q)
            x_hat = model.decode_inter(x_pred, y_motion_hat, y_res_hat, weights)
        if symbols_checksum(symbols) != record.symbols_crc:
            self.reference = None
            raise BitstreamError(f"{what}: symbol checksum mismatch (decoder out of step)")
        return x_hat

    def _checked_string(self, record: FrameRecord, what: str) -> bytes:
        """The frame's string, checked and padded so that CompressAI's decoder, which reads it without
        bounds checks (CompressAI issue #300), cannot read past the end of the copy it is given.

        Refused: a string that no frame of the stream's size could have: not whole 32-bit words,
        shorter than the coder's 8-byte state or longer than MAX_SYMBOL_BYTES per symbol of the frame's
        latents (an I-frame's image latent; a P-frame's motion and residual latents, each with its
        hyper-latent); and one whose initial state is below 2^31, which no encoder writes (its flush
        writes a state of at least RANS64_L) and which would let the decoder read a word at every step.
        What is left is padded with zeros (`guarded_string`).
        """
        y_h, y_w = latent_shape(self.padded.height, self.padded.width)
        z_h, z_w = hyper_shape(y_h, y_w)
        widths = self.model.widths
        symbols = (1 if record.keyframe else 2) * (widths.latent * y_h * y_w + widths.hyper * z_h * z_w)
        limit = RANS_STATE_BYTES + MAX_SYMBOL_BYTES * symbols
        string = record.string
        size = len(string)
        if size < RANS_STATE_BYTES or size % 4 or size > limit:
            kind = "an I-frame" if record.keyframe else "a P-frame"
            raise BitstreamError(f"{what}: a rANS string of {size} bytes; {kind} of this size takes "
                                 f"whole 32-bit words, {RANS_STATE_BYTES} to {limit} bytes")
        try:
            return guarded_string(string, symbols)
        except ValueError as exc:
            raise BitstreamError(f"{what}: {exc}") from None

