"""Frame-by-frame coding with a Scale-Space Flow model and real rANS strings.

The encoder reconstructs each frame exactly as the decoder will (same latents, same layers,
same order), and keeps that reconstruction as the next P-frame's reference.
"""

from __future__ import annotations

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

from shared.codec.bitstream import FrameRecord
from shared.codec.latents import LatentCoder, symbols_checksum
from shared.codec.ssf import FRAME_MULTIPLE, ScaleSpaceFlow, SynthesisWeights
from shared.errors import BitstreamError
from shared.video import FrameSize, padded_size, to_rgb, to_tensor


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


class FrameEncoder(_FrameCodec):
    @torch.inference_mode()
    def encode(self, rgb: np.ndarray, index: int, keyframe: bool) -> tuple[FrameRecord, np.ndarray]:
        """Code one frame; return its record and the reconstruction the decoder will show."""
        if self.reference is None and not keyframe:
            raise ValueError("the first frame of a stream must be a keyframe")
        x = to_tensor(rgb, self.padded, self.device)
        encoder = BufferedRansEncoder()
        symbols: list[Tensor] = []
        model = self.model
        if keyframe:
            y_hat = self.coders["img"].encode(model.img_encoder(x), encoder, symbols)
            x_hat = model.decode_keyframe(y_hat, self.weights)
        else:
            y_motion = model.motion_encoder(torch.cat((x, self.reference), dim=1))
            y_motion_hat = self.coders["motion"].encode(y_motion, encoder, symbols)
            x_pred = model.predict(self.reference, y_motion_hat, self.weights)
            y_res_hat = self.coders["res"].encode(model.res_encoder(x - x_pred), encoder, symbols)
            x_hat = model.decode_inter(x_pred, y_motion_hat, y_res_hat, self.weights)
        self.reference = x_hat
        record = FrameRecord(index, keyframe, self.padded.height, self.padded.width,
                             symbols_checksum(symbols), encoder.flush())
        return record, to_rgb(x_hat, self.size)


class FrameDecoder(_FrameCodec):
    @torch.inference_mode()
    def decode(self, record: FrameRecord) -> np.ndarray:
        """Decode one frame; raise BitstreamError if it cannot be decoded exactly."""
        if (record.height, record.width) != (self.padded.height, self.padded.width):
            raise BitstreamError(
                f"frame {record.index}: coded at {record.width}x{record.height}, stream is {self.padded}"
            )
        if not record.keyframe and self.reference is None:
            raise BitstreamError(f"frame {record.index}: P-frame without a reference")
        y_size = (self.padded.height // 16, self.padded.width // 16)
        decoder = RansDecoder()
        decoder.set_stream(record.string)
        symbols: list[Tensor] = []
        model = self.model
        if record.keyframe:
            y_hat = self.coders["img"].decode(decoder, y_size, self.device, symbols)
            x_hat = model.decode_keyframe(y_hat, self.weights)
        else:
            y_motion_hat = self.coders["motion"].decode(decoder, y_size, self.device, symbols)
            x_pred = model.predict(self.reference, y_motion_hat, self.weights)
            y_res_hat = self.coders["res"].decode(decoder, y_size, self.device, symbols)
            x_hat = model.decode_inter(x_pred, y_motion_hat, y_res_hat, self.weights)
        if symbols_checksum(symbols) != record.symbols_crc:
            self.reference = None
            raise BitstreamError(f"frame {record.index}: symbol checksum mismatch (decoder out of step)")
        self.reference = x_hat
        return to_rgb(x_hat, self.size)
