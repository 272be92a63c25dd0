"""One camera's stream at the receiver: messages in, frames out.

Messages are checked and reassembled into records on the event loop (cheap), then queued for
the decode task, which archives each record and decodes it in a worker thread (one at a
time per camera, in order). Anything malformed is counted and dropped; a record the decoder
cannot use makes it resynchronise at the next segment (an I-frame) and, when a frame was lost,
ask the sender for a fresh start, at most once per KEYFRAME_REQUEST_INTERVAL_SECONDS.
A new connection from the same camera replaces the old one; the decoder state carries over
until the new stream's header arrives.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, deque

import torch
from aiortc import RTCDataChannel, RTCPeerConnection

from receiver.archive import ArchiveWriter
from receiver.live import CameraStatus, LiveView
from shared.codec.bitstream import FrameRecord, Record, SegmentStart, StreamHeader, unpack_packed_record
from shared.codec.modelfile import LoadedModel
from shared.codec.streamdecoder import StreamDecoder
from shared.errors import BitstreamError, ModelError
from shared.wire.framing import MessageType, Reassembler, WireError, encode_control, parse_message

log = logging.getLogger(__name__)

LATENCY_WINDOW_FRAMES = 600
"""Frames the latency quantiles on the live view are computed over (a minute at 10 fps)."""
LATENCY_BUCKETS_SECONDS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_RECORDS = 600
"""Records waiting for the decoder (about a minute of 10 fps video) before new ones are dropped."""
KEYFRAME_REQUEST_INTERVAL_SECONDS = 2.0
RATE_WINDOW_SECONDS = 3.0


class CameraSession:
    def __init__(self, camera: str, loaded: LoadedModel, device: torch.device, live: LiveView,
                 archive: ArchiveWriter | None) -> None:
        self.camera = camera
        self.loaded = loaded
        self.device = device
        self.live = live
        self.archive = archive
        self.pc: RTCPeerConnection | None = None
        self.session_id: str | None = None
        self.decoder: StreamDecoder | None = None
        self.dropped: Counter[str] = Counter()
        """Messages or records dropped, by reason (wire reasons, queue_full, no_header, wrong_model, decode)."""
        self.received_bytes = 0
        self.frames = 0
        self.last_message_at: float | None = None
        self.last_frame_at: float | None = None
        self._earlier = Counter()
        """Fallbacks and adapter rejections of the decoders that later stream headers replaced,
        as `fallback:<reason>` and `rejected:<reason>`."""
        self._earlier_wire: Counter[str] = Counter()
        """Drops counted by the reassemblers of earlier connections."""
        self._channel: RTCDataChannel | None = None
        self._reassembler = Reassembler()
        self._queue: asyncio.Queue[tuple[Record, float]] = asyncio.Queue(maxsize=QUEUE_RECORDS)
        self._sequence = 0
        self._last_keyframe_request = 0.0
        self._recent_frames: deque[float] = deque()
        self._recent_latencies: deque[float] = deque(maxlen=LATENCY_WINDOW_FRAMES)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_SECONDS) + 1)
        """Frames per latency bucket (the last is +Inf), cumulative since start-up, for metrics."""
        self.latency_sum = 0.0
        self._recent_bytes: deque[tuple[float, int]] = deque()
        self._task = asyncio.create_task(self._decode_loop())
        live.add_camera(camera)

    async def attach(self, pc: RTCPeerConnection, session_id: str) -> None:
        """Take over a new connection from this camera (closing the previous one)."""
        previous = self.pc
        self.pc, self.session_id = pc, session_id
        self._earlier_wire += self._reassembler.dropped
        self._reassembler = Reassembler()

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            if pc is not self.pc:
                return
            self._channel = channel
            channel.on("message", self._on_message)

        if previous is not None:
            await previous.close()
        log.info("camera %s: connected (session %s)", self.camera, session_id)

    async def detach(self, session_id: str | None = None) -> bool:
        """End the current connection (when `session_id` names it); True if one was ended."""
        if self.pc is None or (session_id is not None and session_id != self.session_id):
            return False
        pc, self.pc, self.session_id, self._channel = self.pc, None, None, None
        await pc.close()
        log.info("camera %s: disconnected", self.camera)
        return True

    async def close(self) -> None:
        await self.detach()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self.archive:
            self.archive.close()

    def status(self) -> CameraStatus:
        now = time.time()
        while self._recent_frames and now - self._recent_frames[0] > RATE_WINDOW_SECONDS:
            self._recent_frames.popleft()
        while self._recent_bytes and now - self._recent_bytes[0][0] > RATE_WINDOW_SECONDS:
            self._recent_bytes.popleft()
        silent = now - self.last_message_at if self.last_message_at else None
        state = "offline" if self.pc is None else "connecting" if silent is None else "live" if silent < 2 else "stalled"
        return CameraStatus(
            state=state, fps=len(self._recent_frames) / RATE_WINDOW_SECONDS,
            bitrate_bps=8 * sum(n for _, n in self._recent_bytes) / RATE_WINDOW_SECONDS,
            adapter_version=self.decoder.adapter_version if self.decoder else 0,
            fallbacks=self.fallback_segments,
            frames=self.frames, last_frame_at=self.last_frame_at,
            latency_p50_seconds=self.latency_quantile(0.5), latency_p95_seconds=self.latency_quantile(0.95),
        )

    def latency_quantile(self, q: float) -> float | None:
        """Glass-to-glass latency quantile over the recent frames (None before any timed frame)."""
        if not self._recent_latencies:
            return None
        ordered = sorted(self._recent_latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def _record_latency(self, record: FrameRecord, shown_at: float) -> None:
        if not record.captured_us:
            return
        latency = max(0.0, shown_at - record.captured_us / 1e6)
        self._recent_latencies.append(latency)
        self.latency_sum += latency
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_SECONDS, latency)] += 1

    @property
    def fallback_segments(self) -> int:
        """Segments decoded with the base model although they named an adapter, since start-up."""
        return sum(self.adapter_events("fallback").values())

    def adapter_events(self, kind: str) -> Counter[str]:
        """Since start-up, by reason: `fallback` segments or `rejected` adapter updates."""
        current = Counter()
        if self.decoder:
            current = self.decoder.store.fallbacks if kind == "fallback" else self.decoder.store.rejections
        earlier = Counter({key.split(":", 1)[1]: n for key, n in self._earlier.items() if key.startswith(kind + ":")})
        return earlier + current

    def drops(self) -> Counter[str]:
        """Messages and records dropped since start-up, by reason."""
        return self.dropped + self._earlier_wire + self._reassembler.dropped

    def _on_message(self, data: bytes | str) -> None:
        now = time.time()
        self.last_message_at = now
        if isinstance(data, str):
            self.dropped["text"] += 1
            return
        self.received_bytes += len(data)
        self._recent_bytes.append((now, len(data)))
        try:
            message = parse_message(data)
            if message.kind == MessageType.HEARTBEAT:
                self._send(MessageType.HEARTBEAT_ACK, message.payload)
                return
            if message.kind != MessageType.RECORD:
                self.dropped["unexpected_type"] += 1
                return
            packed = self._reassembler.add(message)
            if packed is None:
                return
            record = unpack_packed_record(packed)
        except WireError as exc:
            self.dropped[exc.reason] += 1
            log.warning("camera %s: message dropped: %s", self.camera, exc)
            return
        except BitstreamError as exc:
            self.dropped["bad_record"] += 1
            log.warning("camera %s: record dropped: %s", self.camera, exc)
            return
        try:
            self._queue.put_nowait((record, now))
        except asyncio.QueueFull:
            self.dropped["queue_full"] += 1
            if self.decoder:
                self.decoder.resync()

    def _send(self, kind: MessageType, payload: bytes = b"") -> None:
        if self._channel is not None and self._channel.readyState == "open":
            self._sequence = (self._sequence + 1) % 2**32
            self._channel.send(encode_control(kind, self._sequence, payload))

    def _request_keyframe(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_keyframe_request >= KEYFRAME_REQUEST_INTERVAL_SECONDS:
            self._last_keyframe_request = now
            log.info("camera %s: asking for a keyframe (%s)", self.camera, reason)
            self._send(MessageType.KEYFRAME_REQUEST, reason.encode()[:200])

    async def _decode_loop(self) -> None:
        while True:
            record, received_at = await self._queue.get()
            try:
                await self._handle(record, received_at)
            except Exception:  # one bad record must never stop the camera's stream
                log.exception("camera %s: unexpected error on a %s record", self.camera, type(record).__name__)
                self.dropped["internal"] += 1

    async def _handle(self, record: Record, received_at: float) -> None:
        if isinstance(record, StreamHeader):
            if record.stream != self.camera:
                self.dropped["wrong_stream"] += 1
                log.warning("camera %s: stream header names %r; ignored", self.camera, record.stream)
                return
            if self.decoder:
                self._earlier.update({f"fallback:{k}": n for k, n in self.decoder.store.fallbacks.items()})
                self._earlier.update({f"rejected:{k}": n for k, n in self.decoder.store.rejections.items()})
            try:
                self.decoder = StreamDecoder(record, self.loaded, self.device)
            except ModelError as exc:
                self.decoder = None
                self.dropped["wrong_model"] += 1
                log.error("camera %s: %s", self.camera, exc)
                return
            log.info("camera %s: stream %dx%d at %g fps, segments of %d frames", self.camera, record.width,
                     record.height, record.fps, record.segment_frames)
        elif self.decoder is None:
            self.dropped["no_header"] += 1
            return
        if self.archive:
            self.archive.write(record, received_at)
        if isinstance(record, StreamHeader):
            return
        try:
            rgb = await asyncio.to_thread(self.decoder.feed, record)
        except BitstreamError as exc:
            self.dropped["decode"] += 1
            log.warning("camera %s: %s; waiting for the next segment", self.camera, exc)
            self.decoder.resync()
            if isinstance(record, SegmentStart):
                rgb = await asyncio.to_thread(self.decoder.feed, record)
            else:
                self._request_keyframe(str(exc))
            if isinstance(record, FrameRecord):
                return
        if isinstance(record, SegmentStart) and record.adapter_version and not self.decoder.adapter_version:
            self._request_keyframe(f"adapter version {record.adapter_version} is unusable")
        if rgb is not None:
            self.frames += 1
            self.last_frame_at = time.time()
            self._recent_frames.append(self.last_frame_at)
            self._record_latency(record, self.last_frame_at)
            self.live.publish(self.camera, rgb)
            self.live.update_status(self.camera, self.status())
