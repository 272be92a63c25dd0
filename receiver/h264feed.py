"""Each camera's decoded video as H.264, encoded once for every client that re-publishes it.

RTSP and WHEP clients subscribe to a camera's feed. The feed encodes the camera's decoded frames
with libx264 (through PyAV) only while someone subscribes, in a thread off the event loop, one
frame at a time: a frame decoded while the previous one is being encoded replaces any older one
waiting, so the encoder never holds the decoder back nor falls behind it. Every client gets every
encoded frame through a short queue of its own; a client that lets it fill loses frames until
the next keyframe, which the feed then forces, so that its decoder never gets a frame whose
references it missed. A new client gets a keyframe at once too.

The stream is constrained baseline (what every WebRTC browser decodes), without B-frames or
lookahead (`tune=zerolatency`), with SPS and PPS before every keyframe (a client may join at any
keyframe), capped in rate by the VBV so that a scene change cannot flood a client's link.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType

from adaptcast.receiver.stats import PROTOCOLS, FeedStats, Protocol
from adaptcast.shared.config import H264Config
from adaptcast.shared.metrics import Histogram

log = logging.getLogger(__name__)

CLOCK_RATE = 90_000
"""The frames' timestamps count this many ticks a second (RTP's video clock)."""
TIME_BASE = Fraction(1, CLOCK_RATE)
CLIENT_QUEUE_FRAMES = 30
"""Encoded frames a client may have waiting before it loses frames (three seconds at 10 fps)."""
ENCODE_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


@dataclass(frozen=True)
class EncodedFrame:
    """One access unit of a camera's H.264 stream."""

    data: bytes
    """Annex B NAL units; a keyframe is an IDR picture with SPS and PPS before it."""
    pts: int
    """When the frame was decoded, in TIME_BASE ticks since the feed started: rises with every frame."""
    keyframe: bool
    captured_us: int
    """The sender's capture time of the frame (microseconds since the epoch; 0 when unknown)."""


class FeedClient:
    """One client's view of a camera's feed: the encoded frames waiting for it."""

    def __init__(self, feed: H264Feed, protocol: Protocol) -> None:
        self.feed = feed
        self.protocol = protocol
        self._frames: asyncio.Queue[EncodedFrame | None] = asyncio.Queue(maxsize=CLIENT_QUEUE_FRAMES)
        self._waiting_for_keyframe = True
        self.closed = False
        self.watchers = 1
        """The clients this subscription stands for: a server that fans one subscription out to several
        clients itself (GStreamer's shared RTSP media) sets it, so that the feed counts them all."""

    async def next_frame(self) -> EncodedFrame | None:
        """The next encoded frame, waiting for it; None once the feed or this client is closed."""
        if self.closed:
            return None
        frame = await self._frames.get()
        if frame is None:
            self.closed = True
        return frame

    def sent(self, size: int) -> None:
        """Count `size` bytes as sent to this client (its protocol's packaging included or not, as it knows)."""
        self.feed.bytes_sent[self.protocol] += size

    def request_keyframe(self) -> None:
        """Have the next encoded frame be a keyframe: for a subscription that fans out to a viewer
        who just joined, or that lost a frame on its own way to its clients."""
        self.feed._keyframe_wanted = True

    def close(self) -> None:
        """Stop receiving frames; the feed stops encoding when its last client closes."""
        if not self.closed:
            self.closed = True
            self.feed._unsubscribe(self)
            self._end()

    def _offer(self, frame: EncodedFrame) -> bool:
        """Queue `frame`; False when the client needs a keyframe (it lost a frame, or joined late)."""
        if self._waiting_for_keyframe and not frame.keyframe:
            return False
        if self._frames.full():
            self._waiting_for_keyframe = True
            self.feed.frames_dropped[self.protocol] += 1
            return False
        self._waiting_for_keyframe = False
        self._frames.put_nowait(frame)
        return True

    def _end(self) -> None:
        """The feed is closing: wake the client with None after what it has."""
        while self._frames.full():
            self._frames.get_nowait()
        self._frames.put_nowait(None)


class _Encoder:
    """libx264 for one size and rate of picture; used from one thread at a time."""

    def __init__(self, config: H264Config, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps = width, height, fps
        context = av.CodecContext.create("libx264", "w")
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = TIME_BASE
        context.framerate = Fraction(fps).limit_denominator(1001)
        context.gop_size = max(1, round(fps * config.keyframe_interval_seconds))
        context.bit_rate = config.bitrate_kbps * 1000
        context.options = {
            "preset": config.preset,
            "tune": "zerolatency",
            "profile": "baseline",
            "forced-idr": "1",
            "maxrate": str(config.bitrate_kbps * 1000),
            "bufsize": str(config.bitrate_kbps * 1000),
        }
        self._context = context

    def encode(self, rgb: np.ndarray, pts: int, keyframe: bool) -> tuple[bytes, bool]:
        """The access unit of `rgb` and whether it is a keyframe (zerolatency: one frame in, one out)."""
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, TIME_BASE
        if keyframe:
            frame.pict_type = PictureType.I
        packets = self._context.encode(frame)
        return b"".join(bytes(packet) for packet in packets), any(packet.is_keyframe for packet in packets)


class H264Feed:
    """One camera's H.264 stream and the clients that take it."""

    def __init__(self, camera: str, config: H264Config) -> None:
        self.camera = camera
        self.config = config
        self._clients: list[FeedClient] = []
        self._encoder: _Encoder | None = None
        self._pending: tuple[np.ndarray, int, float, int] | None = None
        """The latest frame not encoded yet: picture, capture time, frame rate, decode-time pts."""
        self._encoding: asyncio.Task | None = None
        self._keyframe_wanted = True
        self._started = time.monotonic()
        self.frames_encoded = 0
        self.frames_skipped = 0
        """Decoded frames not encoded because a newer one arrived while the encoder was busy."""
        self.encode_seconds = Histogram(ENCODE_BUCKETS_SECONDS)
        self.bytes_encoded = 0
        self.bytes_sent: Counter[str] = Counter({protocol: 0 for protocol in PROTOCOLS})
        self.frames_dropped: Counter[str] = Counter({protocol: 0 for protocol in PROTOCOLS})
        """Encoded frames a client of that protocol lost because its queue was full."""
        self.closed = False

    def clients(self, protocol: Protocol) -> int:
        """Clients of `protocol` subscribed now."""
        return sum(client.watchers for client in self._clients if client.protocol == protocol)

    def stats(self) -> FeedStats:
        return FeedStats(
            camera=self.camera, clients={p: self.clients(p) for p in PROTOCOLS},
            sent_bytes={p: self.bytes_sent[p] for p in PROTOCOLS},
            frames_dropped={p: self.frames_dropped[p] for p in PROTOCOLS},
            frames_encoded=self.frames_encoded, frames_skipped=self.frames_skipped, encoded_bytes=self.bytes_encoded,
            encode_seconds=self.encode_seconds.snapshot(),
        )

    def subscribe(self, protocol: Protocol) -> FeedClient:
        """A new client, whose first frame is a keyframe forced for it."""
        if self.closed:
            raise RuntimeError(f"camera {self.camera}: the H.264 feed is closed")
        client = FeedClient(self, protocol)
        self._clients.append(client)
        self._keyframe_wanted = True
        log.info("camera %s: %s client joined the H.264 feed (%d %s, %d in all)", self.camera, protocol,
                 self.clients(protocol), protocol, len(self._clients))
        return client

    def publish(self, rgb: np.ndarray, captured_us: int, fps: float) -> None:
        """Encode `rgb` (uint8 H x W x 3, not written to afterwards) for the clients, if there are any."""
        if not self._clients or self.closed:
            return
        pts = round((time.monotonic() - self._started) * CLOCK_RATE)
        if self._pending is not None:
            self.frames_skipped += 1
        self._pending = (rgb, captured_us, fps, pts)
        if self._encoding is None:
            self._encoding = asyncio.get_running_loop().create_task(self._encode_pending())

    async def close(self) -> None:
        """End every client's stream and stop encoding."""
        self.closed = True
        if self._encoding is not None:
            await asyncio.gather(self._encoding, return_exceptions=True)
        for client in self._clients:
            client.closed = True
            client._end()
        self._clients.clear()

    async def _encode_pending(self) -> None:
        """Encode the latest waiting frame until none waits (one task at a time per feed)."""
        try:
            while self._pending is not None and self._clients:
                rgb, captured_us, fps, pts = self._pending
                self._pending = None
                keyframe, self._keyframe_wanted = self._keyframe_wanted, False
                started = time.perf_counter()
                try:
                    data, is_keyframe = await asyncio.to_thread(self._encode, rgb, fps, pts, keyframe)
                except (av.FFmpegError, ValueError) as exc:
                    log.error("camera %s: H.264 encoding failed (%s); starting a new encoder", self.camera, exc)
                    self._encoder, self._keyframe_wanted = None, True
                    continue
                self.encode_seconds.observe(time.perf_counter() - started)
                if not data:
                    continue
                self.frames_encoded += 1
                self.bytes_encoded += len(data)
                frame = EncodedFrame(data, pts, is_keyframe, captured_us)
                for client in self._clients:
                    if not client._offer(frame):
                        self._keyframe_wanted = True
        finally:
            self._encoding = None

    def _encode(self, rgb: np.ndarray, fps: float, pts: int, keyframe: bool) -> tuple[bytes, bool]:
        """Encode on the worker thread, with a new encoder when the picture's size or rate changed."""
        height, width = rgb.shape[0] & ~1, rgb.shape[1] & ~1  # 4:2:0 wants even sizes
        encoder = self._encoder
        if encoder is None or (encoder.width, encoder.height, encoder.fps) != (width, height, fps):
            log.info("camera %s: H.264 encoder for %dx%d at %g fps (%s, %d kbit/s)", self.camera, width, height, fps,
                     self.config.preset, self.config.bitrate_kbps)
            encoder = self._encoder = _Encoder(self.config, width, height, fps)
            keyframe = True
        return encoder.encode(np.ascontiguousarray(rgb[:height, :width]), pts, keyframe)

    def _unsubscribe(self, client: FeedClient) -> None:
        if client in self._clients:
            self._clients.remove(client)
            log.info("camera %s: %s client left the H.264 feed (%d %s, %d in all)", self.camera, client.protocol,
                     self.clients(client.protocol), client.protocol, len(self._clients))
            if not self._clients:
                self._encoder, self._pending = None, None
