"""Classical anchors through PyAV: the codecs a surveillance link would otherwise use."""

from __future__ import annotations

import time
from collections.abc import Iterable
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
    quality_options: tuple[str, ...]
    """The options a rate point's quality value sets (a CRF, or a fixed quantizer)."""
    qualities: tuple[int, ...]
    """Rate points, best quality first, spanning the neural models' PSNR range and beyond."""
    gop_multiplier: int = 1
    """The codec's intra period in units of the benchmark's: 10 shows what a long GOP alone gives
    a classical codec (x264's own default is 250 frames)."""


_X264_KEYINT = "keyint={K}:min-keyint={K}:scenecut=0"
_CRFS = (23, 28, 33, 38, 43, 48, 51)

X264_VERYFAST_ZEROLATENCY = ClassicalCodec(
    "x264 veryfast zerolatency", "libx264", "h264",
    {"preset": "veryfast", "tune": "zerolatency", "x264-params": _X264_KEYINT}, ("crf",), _CRFS,
)
X264_MEDIUM = ClassicalCodec(
    "x264 medium", "libx264", "h264", {"preset": "medium", "x264-params": _X264_KEYINT}, ("crf",), _CRFS,
)
X265_MEDIUM = ClassicalCodec(
    "x265 medium", "libx265", "hevc",
    {"preset": "medium", "x265-params": "keyint={K}:min-keyint={K}:scenecut=0:log-level=error"}, ("crf",), _CRFS,
)
VP8_REALTIME = ClassicalCodec(
    # libvpx ignores a CRF without a target rate, so each point pins the quantizer; realtime
    # deadline at speed 6 is what libwebrtc's VP8 encoder runs on a desktop.
    "VP8 realtime", "libvpx", "vp8", {"deadline": "realtime", "cpu-used": "6", "b": "100M"},
    ("qmin", "qmax"), (10, 20, 30, 40, 50, 57, 63),
)
X264_VERYFAST_ZEROLATENCY_LONG_GOP = ClassicalCodec(
    "x264 veryfast zerolatency, GOP x10", "libx264", "h264",
    {"preset": "veryfast", "tune": "zerolatency", "x264-params": _X264_KEYINT}, ("crf",), _CRFS, gop_multiplier=10,
)
CLASSICAL_CODECS = (X264_VERYFAST_ZEROLATENCY, X264_VERYFAST_ZEROLATENCY_LONG_GOP, X264_MEDIUM, X265_MEDIUM,
                    VP8_REALTIME)


@dataclass
class ClassicalResult:
    coded_bytes: int
    decoded: list[np.ndarray]
    """RGB frames as the decoder gives them back."""
    encode_seconds: float
    """Colour conversion and encoding."""
    decode_seconds: float
    """Decoding and conversion back to RGB."""


def code_frames(
    frames: list[np.ndarray], codec: ClassicalCodec, quality: int, fps: float, intra_period: int
) -> ClassicalResult:
    """Encode RGB frames as 4:2:0 video at `quality`, decode them back, and time both."""
    intra_period *= codec.gop_multiplier
    height, width = frames[0].shape[:2]
    encoder = av.Codec(codec.encoder, "w").create("video")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    rate = Fraction(fps).limit_denominator(1001)
    encoder.time_base, encoder.framerate = 1 / rate, rate
    encoder.gop_size = intra_period
    options = {key: value.replace("{K}", str(intra_period)) for key, value in codec.options.items()}
    encoder.options = {**options, **{key: str(quality) for key in codec.quality_options}}
    decoder = av.Codec(codec.decoder, "r").create("video")
    result = ClassicalResult(0, [], 0.0, 0.0)

    def drain(packets: Iterable[av.Packet | None]) -> None:
        started = time.perf_counter()
        for packet in packets:
            result.coded_bytes += packet.size if packet is not None else 0
            result.decoded.extend(f.to_ndarray(format="rgb24") for f in decoder.decode(packet))
        result.decode_seconds += time.perf_counter() - started

    for i, rgb in enumerate(frames):
        started = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets = encoder.encode(frame)
        result.encode_seconds += time.perf_counter() - started
        drain(packets)
    started = time.perf_counter()
    packets = encoder.encode(None)
    result.encode_seconds += time.perf_counter() - started
    drain(packets)
    drain([None])  # flush the decoder
    return result
