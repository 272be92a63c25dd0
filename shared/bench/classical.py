"""Classical anchors through PyAV: the codecs a surveillance link would otherwise use."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


@dataclass(frozen=True)
class ClassicalCodec:
    label: str
    encoder: str
    decoder: str
    options: dict[str, str]
    """Encoder options; `{K}` is replaced by the intra period."""


X264_VERYFAST_ZEROLATENCY = ClassicalCodec(
    "x264 veryfast zerolatency", "libx264", "h264",
    {"preset": "veryfast", "tune": "zerolatency", "x264-params": "keyint={K}:min-keyint={K}:scenecut=0"},
)
X264_MEDIUM = ClassicalCodec(
    "x264 medium", "libx264", "h264", {"preset": "medium", "x264-params": "keyint={K}:min-keyint={K}:scenecut=0"}
)
X265_MEDIUM = ClassicalCodec(
    "x265 medium", "libx265", "hevc",
    {"preset": "medium", "x265-params": "keyint={K}:min-keyint={K}:scenecut=0:log-level=error"},
)


def code_frames(
    frames: list[np.ndarray], codec: ClassicalCodec, crf: int, fps: float, intra_period: int
) -> tuple[int, list[np.ndarray]]:
    """Encode RGB frames as 4:2:0 video at `crf`; return the coded bytes and the decoded RGB frames."""
    height, width = frames[0].shape[:2]
    encoder = av.CodecContext.create(codec.encoder, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    rate = Fraction(fps).limit_denominator(1001)
    encoder.time_base, encoder.framerate = 1 / rate, rate
    encoder.gop_size = intra_period
    encoder.options = {key: value.replace("{K}", str(intra_period)) for key, value in codec.options.items()}
    encoder.options["crf"] = str(crf)
    decoder = av.CodecContext.create(codec.decoder, "r")
    coded_bytes = 0
    decoded: list[np.ndarray] = []

    def drain(packets) -> None:
        nonlocal coded_bytes
        for packet in packets:
            coded_bytes += packet.size
            decoded.extend(f.to_ndarray(format="rgb24") for f in decoder.decode(packet))

    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        drain(encoder.encode(frame))
    drain(encoder.encode(None))
    decoded.extend(f.to_ndarray(format="rgb24") for f in decoder.decode(None))
    return coded_bytes, decoded
