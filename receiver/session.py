"""One camera's stream at the receiver: messages in, frames out.

Messages are checked and reassembled into records on the event loop (cheap), then queued for
the decode task (up to the camera's queue byte budget), which refuses a stream whose header
claims more than the camera's limits (frame size, frame rate) before any decoding, archives
each record and has the camera's decode worker process decode it (receiver/workers.py: a
record that kills or hangs it quarantines this camera only). Anything malformed is counted and
dropped; a record the decoder cannot use makes it resynchronise at the next segment (an
I-frame, or a P-frame from a background picture) and, when a frame was lost, an adapter was
unusable, a background was missing or refused, the worker died on the camera's record or its
quarantine ended, ask the sender for a fresh start (which sends the background first), at most once per
KEYFRAME_REQUEST_INTERVAL_SECONDS. A new connection from the same camera replaces the old
one; the decoder state carries over until the new stream's header arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque

from aiortc import RTCDataChannel, RTCPeerConnection

from adaptcast.receiver.archive import ArchiveWriter
from adaptcast.receiver.h264feed import H264Feed
from adaptcast.receiver.live import CameraState, CameraStatus, LiveView
from adaptcast.receiver.stats import DropReason, MalformedReason, SessionStats
from adaptcast.receiver.workers import DecodePool, DecodeResult
from adaptcast.shared.codec.bitstream import (
    BackgroundRecord,
    FrameKind,
    FrameRecord,
    Record,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    unpack_packed_record,
)
from adaptcast.shared.config import StreamLimits
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.metrics import Histogram
from adaptcast.shared.wire.framing import MessageType, Reassembler, WireError, WireReason, encode_control, parse_message

log = logging.getLogger(__name__)

LATENCY_WINDOW_FRAMES = 600
"""Frames the latency quantiles on the live view are computed over (a minute at 10 fps)."""
ON_TIME_SECONDS = 0.3
"""A frame shown within this of its capture is on time (the benches' figure): a bucket bound below."""
LATENCY_BUCKETS_SECONDS = (0.05, 0.1, 0.2, ON_TIME_SECONDS, 0.5, 1.0, 2.0, 5.0, 10.0)
DECODE_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SWAP_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
ACTIVE_SECONDS = 2.0
"""A session is active while its last message is at most this old (heartbeats come every second)."""
QUEUE_RECORDS = 600
"""Records waiting for the decoder (about a minute of 10 fps video) before new ones are dropped;
their bytes are bounded too, by the camera's `queue_bytes` limit."""
LATE_SECONDS = 2.0
"""A frame that waited longer than this in the queue (or than a segment lasts, since segment
mode delivers a whole segment at once) is archived but not decoded, nor the rest of its
segment: an overloaded receiver would otherwise show the past later and later. The next
segment's I-frame starts afresh."""
KEYFRAME_REQUEST_INTERVAL_SECONDS = 2.0
RATE_WINDOW_SECONDS = 3.0


class CameraSession:
    def __init__(self, camera: str, pool: DecodePool, live: LiveView, archive: ArchiveWriter | None,
                 heartbeat_timeout: float = 5.0, limits: StreamLimits | None = None,
                 feed: H264Feed | None = None) -> None:
        self.camera = camera
        self.feed = feed
        """The camera's H.264 stream for RTSP and WHEP clients, which every decoded frame goes to."""
        self.limits = limits or StreamLimits()
        """What the camera's stream header may claim and its queue may hold, checked before decoding."""
        self.heartbeat_timeout = heartbeat_timeout
        """A session without a message for this long is closed: its sender is gone (the sender
        sends a heartbeat every second and would itself have given up on the path by then)."""
        self.pool = pool
        self.live = live
        self.archive = archive
        self.pc: RTCPeerConnection | None = None
        self.session_id: str | None = None
        self.adapter_version = 0
        """The adapter version decoding the current segment (0: the base model)."""
        self.malformed: Counter[MalformedReason] = Counter()
        """Messages or records refused by the checks, by reason (text, unexpected_type, bad_record;
        the reassembler counts the wire reasons)."""
        self.dropped: Counter[DropReason] = Counter()
        """Well-formed records not decoded, by reason (queue_full, wrong_stream, no_header,
        wrong_model, decode, no_background (a segment from a background not held: its frames are
        not shown), bad_background, worker_crashed, worker_hung, internal; over_limits: a stream
        header over the camera's limits, and the records after it until a header within them;
        quarantined: records while the camera is quarantined for killing or hanging its decode
        worker; late: archived, not decoded)."""
        self.received_bytes = 0
        self.messages = 0
        self.frames = 0
        self.skipped_frames = 0
        """Frames shown that the sender skipped (the reference shown again)."""
        self.backgrounds = 0
        """Background pictures decoded."""
        self.background_bytes = 0
        self.segments = 0
        """Segments the decoder started."""
        self.adapter_swaps = 0
        self.decode_seconds = Histogram(DECODE_BUCKETS_SECONDS)
        self.swap_seconds = Histogram(SWAP_BUCKETS_SECONDS)
        self.latency = Histogram(LATENCY_BUCKETS_SECONDS)
        """Glass-to-glass latency of every timed frame since start-up, for metrics."""
        self.last_message_at: float | None = None
        self._attached_at = 0.0
        self.last_frame_at: float | None = None
        self._adapter_events: dict[str, Counter[str]] = {"fallback": Counter(), "rejected": Counter()}
        """Fallbacks and rejected updates of the current decoder (in the worker), by reason."""
        self._earlier: dict[str, Counter[str]] = {"fallback": Counter(), "rejected": Counter()}
        """The same for the decoders that later stream headers replaced."""
        self._snapshot: tuple[int, bytes] | None = None
        """The adapter the current segment decodes with, coded, for the archive's files."""
        self._earlier_wire: Counter[WireReason] = Counter()
        """Drops counted by the reassemblers of earlier connections."""
        self._channel: RTCDataChannel | None = None
        self._reassembler = Reassembler()
        self._queue: asyncio.Queue[tuple[Record, bytes, float]] = asyncio.Queue(maxsize=QUEUE_RECORDS)
        self._queued_bytes = 0
        self._over_limits = False
        """The latest stream header was refused: the records of its stream go to no decoder."""
        self._quarantined = False
        """The pool refused the latest record as quarantined: ask for a fresh start when it takes one again."""
        self._segment_seconds = 0.0
        self._fps = 10.0
        """The current stream's frame rate (from its header)."""
        """From the stream header: how long a segment lasts."""
        self._skipping_late = False
        """Frames of the current segment are late: skip them until the next segment."""
        self._sequence = 0
        self._last_keyframe_request = 0.0
        self._recent_frames: deque[float] = deque()
        self._recent_latencies: deque[float] = deque(maxlen=LATENCY_WINDOW_FRAMES)
        self._recent_bytes: deque[tuple[float, int]] = deque()
        self._task = asyncio.create_task(self._decode_loop())
        self._watchdog = asyncio.create_task(self._close_silent_sessions())
        pool.assign(camera)
        live.add_camera(camera)

    async def attach(self, pc: RTCPeerConnection, session_id: str) -> None:
        """Take over a new connection from this camera (closing the previous one)."""
        previous = self.pc
        self.pc, self.session_id = pc, session_id
        self._attached_at = time.time()
        self._earlier_wire += self._reassembler.dropped
        self._reassembler = Reassembler()

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            if pc is not self.pc:
                return
            self._channel = channel
            channel.on("message", self._on_message)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is self.pc and pc.connectionState == "failed":  # e.g. DTLS: a certificate not the signaled one
                log.warning("camera %s: connection failed (session %s)", self.camera, session_id)
                await self.detach(session_id)

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
        for task in (self._task, self._watchdog):
            task.cancel()
        await asyncio.gather(self._task, self._watchdog, return_exceptions=True)
        if self.archive:
            await asyncio.to_thread(self.archive.close)  # waits for its disk thread

    async def _close_silent_sessions(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat_timeout / 4))
            if self.pc is None:
                continue
            silent = time.time() - max(self._attached_at, self.last_message_at or 0.0)
            if silent > self.heartbeat_timeout:
                log.warning("camera %s: no message for %.1f s; closing session %s", self.camera, silent,
                            self.session_id)
                await self.detach()

    def status(self) -> CameraStatus:
        now = time.time()
        while self._recent_frames and now - self._recent_frames[0] > RATE_WINDOW_SECONDS:
            self._recent_frames.popleft()
        while self._recent_bytes and now - self._recent_bytes[0][0] > RATE_WINDOW_SECONDS:
            self._recent_bytes.popleft()
        silent = now - self.last_message_at if self.last_message_at else None
        state: CameraState = (
            "offline" if self.pc is None else "connecting" if silent is None else "live" if silent < 2 else "stalled")
        return CameraStatus(
            state=state, fps=len(self._recent_frames) / RATE_WINDOW_SECONDS,
            bitrate_bps=8 * sum(n for _, n in self._recent_bytes) / RATE_WINDOW_SECONDS,
            adapter_version=self.adapter_version,
            fallbacks=self.fallback_segments,
            frames=self.frames, skipped_frames=self.skipped_frames, backgrounds=self.backgrounds,
            last_frame_at=self.last_frame_at,
            latency_p50_seconds=self.latency_quantile(0.5), latency_p95_seconds=self.latency_quantile(0.95),
        )

    def stats(self) -> SessionStats:
        return SessionStats(
            camera=self.camera, connected=self.pc is not None, active=self.active,
            received_bytes=self.received_bytes, messages=self.messages, malformed=dict(self.malformed_counts()),
            dropped=dict(self.dropped), segments=self.segments, frames=self.frames,
            skipped_frames=self.skipped_frames, backgrounds=self.backgrounds, background_bytes=self.background_bytes,
            decode_seconds=self.decode_seconds.snapshot(), latency=self.latency.snapshot(),
            fallbacks=dict(self.adapter_events("fallback")), rejections=dict(self.adapter_events("rejected")),
            adapter_swaps=self.adapter_swaps, swap_seconds=self.swap_seconds.snapshot(),
            adapter_version=self.adapter_version, archive=self.archive.stats() if self.archive else None,
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
        self.latency.observe(latency)

    @property
    def fallback_segments(self) -> int:
        """Segments decoded with the base model although they named an adapter, since start-up."""
        return sum(self.adapter_events("fallback").values())

    def adapter_events(self, kind: str) -> Counter[str]:
        """Since start-up, by reason: `fallback` segments or `rejected` adapter updates."""
        return self._earlier[kind] + self._adapter_events[kind]

    def snapshot_for(self, version: int) -> bytes | None:
        """The coded snapshot of `version` when it decodes the current segment (the archive asks)."""
        return self._snapshot[1] if self._snapshot and self._snapshot[0] == version else None

    def malformed_counts(self) -> Counter[MalformedReason]:
        """Messages and records refused by the checks since start-up, by reason."""
        return self.malformed + self._earlier_wire + self._reassembler.dropped

    @property
    def active(self) -> bool:
        """Connected, and a message (at least a heartbeat) came recently."""
        return (self.pc is not None and self.last_message_at is not None
                and time.time() - self.last_message_at <= ACTIVE_SECONDS)

    def _on_message(self, data: bytes | str) -> None:
        now = time.time()
        self.last_message_at = now
        self.messages += 1
        if isinstance(data, str):
            self.malformed["text"] += 1
            return
        self.received_bytes += len(data)
        self._recent_bytes.append((now, len(data)))
        try:
            message = parse_message(data)
            if message.kind == MessageType.HEARTBEAT:
                self._send(MessageType.HEARTBEAT_ACK, message.payload)
                return
            if message.kind != MessageType.RECORD:
                self.malformed["unexpected_type"] += 1
                return
            packed = self._reassembler.add(message)
            if packed is None:
                return
            record = unpack_packed_record(packed)
        except WireError as exc:
            self.malformed[exc.reason] += 1
            log.warning("camera %s: message dropped: %s", self.camera, exc)
            return
        except BitstreamError as exc:
            self.malformed["bad_record"] += 1
            log.warning("camera %s: record dropped: %s", self.camera, exc)
            return
        except Exception:  # a parser bug must cost one message, not the connection (aiortc would stop reading)
            self.malformed["internal"] += 1
            log.exception("camera %s: unexpected error on a message; dropped", self.camera)
            return
        if self._queued_bytes + len(packed) > self.limits.queue_bytes:
            self.dropped["queue_full"] += 1
            return
        try:
            self._queue.put_nowait((record, packed, now))
        except asyncio.QueueFull:
            self.dropped["queue_full"] += 1  # the decoder sees the gap and resynchronises
            return
        self._queued_bytes += len(packed)

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
            record, packed, received_at = await self._queue.get()
            self._queued_bytes -= len(packed)
            try:
                await self._handle(record, packed, received_at)
            except Exception:  # one bad record must never stop the camera's stream
                log.exception("camera %s: unexpected error on a %s record", self.camera, type(record).__name__)
                self.dropped["internal"] += 1

    async def _handle(self, record: Record, packed: bytes, received_at: float) -> None:
        if isinstance(record, StreamHeader) and record.stream != self.camera:
            self.dropped["wrong_stream"] += 1
            log.warning("camera %s: stream header names %r; ignored", self.camera, record.stream)
            return
        if isinstance(record, StreamHeader):
            self._over_limits = not self._within_limits(record)
        if self._over_limits:
            self.dropped["over_limits"] += 1
            return
        if self.archive and not isinstance(record, SegmentStart):
            self.archive.write(record, received_at)
        if isinstance(record, SegmentStart):
            self._skipping_late = False
        elif isinstance(record, (FrameRecord, StreamEnd)) and self._late(received_at):
            self.dropped["late"] += 1
            return
        result = await self.pool.feed(self.camera, packed)
        if self._quarantined and result.reason != "quarantined":
            self._request_keyframe("quarantine over")
        self._quarantined = result.reason == "quarantined"
        if isinstance(record, StreamHeader):
            for kind in self._earlier:
                self._earlier[kind] += self._adapter_events[kind]
                self._adapter_events[kind] = Counter()
            if result.error is None:
                self._segment_seconds = record.segment_frames / record.fps
                self._fps = record.fps
                log.info("camera %s: stream %dx%d at %g fps, segments of %d frames", self.camera, record.width,
                         record.height, record.fps, record.segment_frames)
        self._take(result)
        if isinstance(record, SegmentStart):
            self.segments += result.error is None
            if result.resynced and result.error is None:
                log.info("camera %s: segment %d resumes the stream after missing records", self.camera, record.index)
            self._snapshot = (result.adapter_version, result.adapter_snapshot) if result.adapter_snapshot else None
            if self.archive:
                self.archive.write(record, received_at)
            if record.adapter_version and not result.adapter_version:
                self._request_keyframe(f"adapter version {record.adapter_version} is unusable")
        if result.error is not None:
            self.dropped[result.reason or "decode"] += 1
            log.warning("camera %s: %s record not used: %s", self.camera, type(record).__name__, result.error)
            if result.reason in ("worker_crashed", "worker_hung", "no_header", "no_background", "bad_background") \
                    or isinstance(record, FrameRecord):
                self._request_keyframe(result.error)
        elif isinstance(record, BackgroundRecord):
            self.backgrounds += 1
            self.background_bytes += len(packed)
        if result.frame is not None and isinstance(record, FrameRecord):  # only a frame record gives a picture
            self.frames += 1
            self.skipped_frames += record.kind == FrameKind.SKIP
            self.last_frame_at = time.time()
            self._recent_frames.append(self.last_frame_at)
            self._record_latency(record, self.last_frame_at)
            self.live.publish(self.camera, result.frame)
            if self.feed is not None:
                self.feed.publish(result.frame, record.captured_us, self._fps)
            self.live.update_status(self.camera, self.status())

    def _within_limits(self, header: StreamHeader) -> bool:
        """Whether a stream header's claims fit the camera's limits (logged when they do not)."""
        cap = self.limits.max_size
        if header.width <= cap.width and header.height <= cap.height and header.fps <= self.limits.max_fps:
            return True
        log.warning("camera %s: stream header claims %dx%d at %g fps, over the limits (%s at %g fps); its stream "
                    "is refused until a header within them", self.camera, header.width, header.height, header.fps,
                    cap, self.limits.max_fps)
        return False

    def _late(self, received_at: float) -> bool:
        """Whether a frame (or the end record after it) is to be skipped as late."""
        if not self._skipping_late:
            waited = time.time() - received_at
            self._skipping_late = waited > max(LATE_SECONDS, self._segment_seconds)
            if self._skipping_late:
                log.warning("camera %s: records waited %.1f s to be decoded; skipping the rest of the segment",
                            self.camera, waited)
        return self._skipping_late

    def _take(self, result: DecodeResult) -> None:
        """The worker's view of the camera's decoder after a record, and its timings."""
        if result.decode_seconds is not None:
            self.decode_seconds.observe(result.decode_seconds)
        if result.swap_seconds is not None:
            self.adapter_swaps += 1
            self.swap_seconds.observe(result.swap_seconds)
        self.adapter_version = result.adapter_version
        self._adapter_events["fallback"] = Counter(result.fallbacks)
        self._adapter_events["rejected"] = Counter(result.rejections)
