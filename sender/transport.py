"""The sender's side of the wire: WHIP signaling, one WebRTC data channel per camera, and the
scheduling of what goes on it.

One connection per camera (not one per box): a camera's reconnection, backoff and SCTP send
queue are its own, so a camera with a slow path or a large adapter never delays another's
latents, and the receiver authenticates each camera by its own token. The cost, one DTLS
handshake per camera, is paid once per connection.

aiortc's data channel has an unbounded send buffer, so the sender throttles itself on
`bufferedAmount`: in live mode to about half a second of data at the rate the buffer is
measured to drain, so that on a link slower than the stream latents wait here, where the
stale rule can drop them, and not in SCTP's queue, where heartbeats would wait behind them.
The buffer is one queue for all messages, so adapter chunks are
interleaved with latents here (a few chunks after each frame); partial reliability would
only expire data already handed to SCTP, so in live mode the sender drops latents that are
too old itself (and the rest of their segment, whose P-frames depend on them). A dead path
is noticed by an application heartbeat within HEARTBEAT_TIMEOUT_SECONDS, long before ICE
consent freshness would.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from adaptcast.sender.encoder import Outgoing
from adaptcast.sender.stats import LinkStats
from adaptcast.shared.codec.bitstream import AdapterRecord, BackgroundRecord, FrameRecord, SegmentStart, pack_record
from adaptcast.shared.wire.framing import (
    MAX_MESSAGE_BYTES,
    MessageType,
    WireError,
    encode_control,
    encode_record,
    heartbeat_payload,
    parse_heartbeat,
    parse_message,
)
from adaptcast.shared.wire.inbound_limits import InboundLimits, limit_inbound

log = logging.getLogger(__name__)

CHANNEL_LABEL = "adaptcast"
HIGH_WATER_BYTES = 256 * 1024
"""Never let the data channel hold more than this much unsent data."""
LIVE_BUFFER_SECONDS = 0.5
"""Live mode: at most this many seconds of data (at the measured drain rate) in the channel's
buffer; an empty buffer takes any one message, so a slow link holds one message, not 16 KiB."""
MIN_LIVE_BUFFER_BYTES = MAX_MESSAGE_BYTES
"""Live mode, until the drain rate is known: the buffer's limit."""
DRAIN_WINDOW_SECONDS = 2.0
ADAPTER_CHUNKS_PER_FRAME = 4
HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TIMEOUT_SECONDS = 5.0
READY_POLL_SECONDS = 1.0
"""While the receiver is unreachable, ask whether it is back this often (each ask times out after as long)."""
STALE_FRAME_SECONDS = 1.0
"""Live mode: a frame still unsent this long after capture is dropped, with the rest of its segment."""
CONGESTED_SECONDS = 1.0
"""The link counts as the bottleneck once data has waited for it this long without a break."""
MAX_QUEUED_RECORDS = 2000
"""Segment mode: beyond this, whole segments are dropped at the sender (counted)."""


class ConnectionLost(Exception):
    """The connection to the receiver is gone; the caller reconnects."""


class SignalingError(Exception):
    """The receiver refused or did not answer the WHIP request."""


class ReceiverUnreachable(SignalingError):
    """No HTTP answer to the WHIP request at all (refused, reset, timed out): the receiver, or
    the path to it, is down, so the next try can wait for it to answer (`wait_until_ready`)."""


class WhipConnection:
    """An RTCPeerConnection with one data channel, set up by a WHIP POST (RFC 9725)."""

    def __init__(self, endpoint: str, token: str, timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self.endpoint = endpoint
        self._token = token
        self._timeout = timeout
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        """aiohttp's `ssl`: our context (a private CA), or True for its default verification."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel(CHANNEL_LABEL, ordered=True)
        # the receiver only sends control messages: a peer that floods below the data channel
        # (a receiver impersonated over plain HTTP signaling) loses the association, not our memory
        limit_inbound(self.pc, InboundLimits(), self._inbound_exceeded)
        self.resource: str | None = None
        """The session's URL on the receiver (the WHIP Location), for DELETE; None when the Location
        named another scheme, host or port, which is not sent the token."""

    def _inbound_exceeded(self, reason: str, detail: str) -> None:
        log.warning("%s: the receiver's data exceeded the inbound limit (%s: %s); association aborted",
                    self.endpoint, reason, detail)

    async def open(self) -> None:
        """Offer, POST, answer, and wait for the channel to open; SignalingError otherwise."""
        # set when the channel opened, or when the connection failed (ICE, or DTLS: the peer's
        # certificate is not the one the signaling gave) and never will
        settled = asyncio.Event()
        self.channel.on("open", settled.set)
        self.pc.on("connectionstatechange", lambda: settled.set() if self.pc.connectionState == "failed" else None)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        try:
            answer = await self._post_offer(self.pc.localDescription.sdp)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            try:
                await asyncio.wait_for(settled.wait(), self._timeout)
            except asyncio.TimeoutError:
                raise SignalingError(f"the data channel did not open within {self._timeout:g} s") from None
            if self.channel.readyState != "open":
                raise SignalingError("the connection failed before its data channel opened (ICE, or DTLS: a "
                                     "certificate other than the signaled one?)")
        except ValueError as exc:  # an answer aiortc cannot take
            await self.pc.close()
            raise SignalingError(f"unusable answer: {exc}") from None
        except SignalingError:
            await self.pc.close()
            raise

    async def _post_offer(self, offer: str) -> str:
        """The WHIP POST; the answer's SDP. ReceiverUnreachable when no HTTP answer came back."""
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self._token}"}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout)) as http, http.post(
                self.endpoint, data=offer, headers=headers, ssl=self._ssl
            ) as response:
                body = await response.text()
        except asyncio.TimeoutError:
            raise ReceiverUnreachable(f"no answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise ReceiverUnreachable(f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__) \
                from None
        if response.status != 201:
            raise SignalingError(f"receiver answered {response.status}: {body.strip()[:200]!r}")
        location = response.headers.get("Location")
        if not location:
            raise SignalingError("receiver answered 201 without a Location")
        resource = urljoin(self.endpoint, location)
        if _origin(resource) == _origin(self.endpoint):
            self.resource = resource
        else:  # the DELETE would carry the bearer token to whoever that is
            log.warning("%s: the receiver's Location %r is not on its origin; the session will not be DELETEd there",
                        self.endpoint, location[:200])
        return body

    async def close(self) -> None:
        """End the session: DELETE the WHIP resource (best effort) and close the connection."""
        if self.resource:
            try:
                timeout = aiohttp.ClientTimeout(total=2)
                async with aiohttp.ClientSession(timeout=timeout) as http, http.delete(
                    self.resource, headers={"Authorization": f"Bearer {self._token}"}, ssl=self._ssl
                ):
                    pass
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # the receiver may be gone already; closing the connection is what matters
        await self.pc.close()


class DrainRate:
    """How fast the data channel's buffer empties onto the network: bytes a second over the
    last DRAIN_WINDOW_SECONDS. While the buffer stays full this is the path's throughput."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, drained_bytes: int) -> None:
        """Record that `drained_bytes` (a running total) had left the buffer at `now` (monotonic)."""
        if self._samples and now - self._samples[-1][0] < 0.05:
            return
        self._samples.append((now, drained_bytes))
        while now - self._samples[0][0] > DRAIN_WINDOW_SECONDS:
            self._samples.popleft()

    def bytes_per_second(self) -> float | None:
        """None until the samples span a quarter of a second."""
        if not self._samples:
            return None
        (first_time, first_bytes), (last_time, last_bytes) = self._samples[0], self._samples[-1]
        span = last_time - first_time
        return (last_bytes - first_bytes) / span if span >= 0.25 else None


async def wait_until_ready(url: str, within: float, ssl_context: ssl.SSLContext | None = None) -> bool:
    """Poll the receiver's `/readyz` (`url`) every READY_POLL_SECONDS until it answers 200, for
    at most `within` seconds; whether it did. After an outage the sender reconnects about a
    second after the receiver is back, not when a backoff that grew during the outage ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=READY_POLL_SECONDS)) as http:
        while True:
            polled_at = loop.time()
            try:
                async with http.get(url, ssl=ssl_context or True) as response:
                    if response.status == 200:
                        return True
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # still down
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(max(0.0, min(deadline, polled_at + READY_POLL_SECONDS) - loop.time()))


class StreamSender:
    """Sends one camera's records over an open connection, in order, throttled, and watches
    the connection with heartbeats. `run` returns only by raising ConnectionLost."""

    def __init__(self, camera: str, connection: WhipConnection, live: bool,
                 on_keyframe_request: Callable[[str], None], drop_adapter_versions: set[int] | None = None) -> None:
        self.camera = camera
        self.drop_adapter_versions = drop_adapter_versions if drop_adapter_versions is not None else set()
        """Fault injection: the first update of each of these versions is not sent (tests of fallback)."""
        self.connection = connection
        self.live = live
        self._on_keyframe_request = on_keyframe_request
        self._main: deque[Outgoing] = deque()
        self._adapter_chunks: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._sequence = 0
        self._last_ack = time.monotonic()
        self._heartbeats_sent = 0
        self._acked_heartbeat = 0
        self._dropping_segment: int | None = None
        self._handed_bytes = 0
        """Every byte given to the channel, heartbeats included: less its bufferedAmount, what has drained."""
        self._drain = DrainRate()
        self._frames_handed = 0
        self._frames_confirmed = 0
        """Frames handed before the last answered heartbeat: the channel is ordered, so they arrived."""
        self._frames_at_heartbeat: deque[tuple[int, int]] = deque()
        """(heartbeat number, frames handed when it was sent) of the heartbeats not yet answered."""
        self.sent_bytes: Counter[str] = Counter()
        """Bytes handed to the channel, by kind: latent, adapter, background, control (framing included)."""
        self.payload_bytes: Counter[str] = Counter()
        """The packed records' own bytes, by kind: what the framing overhead is measured against."""
        self.dropped: Counter[str] = Counter()
        """Records not sent, by reason: stale, backlog."""
        self.rtt_seconds: float | None = None
        self._backlogged_since: float | None = None
        connection.channel.on("message", self._on_message)
        connection.channel.on("bufferedamountlow", self._drained.set)
        connection.channel.on("close", self._ready.set)  # wake the loop so it sees the close

    def put(self, items: list[Outgoing]) -> None:
        """Queue records from the pipeline (never blocks: the pipeline must not wait on the network)."""
        for item in items:
            if isinstance(item.record, AdapterRecord) and item.adapter_version in self.drop_adapter_versions:
                self.drop_adapter_versions.discard(item.adapter_version)
                self.dropped["fault"] += 1
                log.warning("camera %s: fault injection: adapter version %d not sent", self.camera,
                            item.adapter_version)
            elif isinstance(item.record, AdapterRecord):
                packed = pack_record(item.record)
                self.payload_bytes["adapter"] += len(packed)
                self._adapter_chunks.extend(encode_record(self._next_sequence(), None, None, packed))
            else:
                self._main.append(item)
        if not self.live and len(self._main) > MAX_QUEUED_RECORDS:
            self._drop_oldest_segment()
        self._ready.set()

    def queued_bytes(self) -> int:
        """Bytes waiting to go: the data channel's buffer, the adapter chunks, and the latents
        queued here (their coded strings; a record's few header bytes are left out)."""
        latents = sum(len(item.record.string) for item in self._main if isinstance(item.record, FrameRecord))
        return self.connection.channel.bufferedAmount + sum(map(len, self._adapter_chunks)) + latents

    def stats(self) -> LinkStats:
        return LinkStats(queued_bytes=self.queued_bytes(), channel_state=self.connection.channel.readyState,
                         rtt_seconds=self.rtt_seconds)

    def backlog_seconds(self) -> float:
        """How long what waits to be sent takes to leave at the measured drain rate (0 until it is measured)."""
        rate = self._drain.bytes_per_second()
        return self.queued_bytes() / rate if rate else 0.0

    def link_bps(self) -> float | None:
        """The path's throughput (bits a second) once it has been the bottleneck for CONGESTED_SECONDS:
        data waiting for it all along (more than half the live buffer's worth), so that what left
        the buffer is what the path carries. None while the path keeps up: what drains then is
        only what the stream offers, and no measure of the path; and None while nothing drains at
        all (a dead path, which the heartbeat deals with)."""
        rate = self._drain.bytes_per_second()
        if not rate or self.queued_bytes() <= rate * LIVE_BUFFER_SECONDS / 2:
            self._backlogged_since = None
            return None
        now = time.monotonic()
        if self._backlogged_since is None:
            self._backlogged_since = now
        return rate * 8 if now - self._backlogged_since >= CONGESTED_SECONDS else None

    def abandon(self) -> None:
        """The connection is gone: count the frames it leaves undelivered. Those still queued
        here are `disconnected`; those handed to the channel after the last answered heartbeat
        are `unconfirmed` (some may have arrived: the receiver's counters tell)."""
        self.dropped["disconnected"] += sum(1 for item in self._main if isinstance(item.record, FrameRecord))
        self.dropped["unconfirmed"] += self._frames_handed - self._frames_confirmed
        self._main.clear()
        self._frames_confirmed = self._frames_handed

    async def drained(self, timeout: float) -> None:
        """Wait (at most `timeout`) until everything queued has left the channel's buffer."""
        deadline = time.monotonic() + timeout
        while (self._main or self._adapter_chunks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Closing the connection aborts the SCTP association, losing what is in flight; the
        # channel is ordered, so the answer to a heartbeat sent now proves everything before it landed.
        barrier = self._send_heartbeat()
        while self._acked_heartbeat < barrier and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                self._check_alive()
                if not self._main and not self._adapter_chunks:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                await self._send_next()
        finally:
            heartbeat.cancel()

    async def _send_next(self) -> None:
        item = self._main[0] if self._main else None
        if item is None:
            await self._send(self._adapter_chunks.popleft(), "adapter")
        elif isinstance(item.record, SegmentStart) and self._adapter_chunks:
            await self._send(self._adapter_chunks.popleft(), "adapter")  # the segment may need it whole
        else:
            self._main.popleft()
            if isinstance(item.record, FrameRecord) and self._is_stale(item):
                return
            packed = pack_record(item.record)
            kind = _kind(item.record)
            self.payload_bytes[kind] += len(packed)
            for message in encode_record(self._next_sequence(), item.segment, item.frame, packed):
                await self._send(message, kind)
            if isinstance(item.record, FrameRecord):
                self._frames_handed += 1
                for _ in range(min(ADAPTER_CHUNKS_PER_FRAME, len(self._adapter_chunks))):
                    await self._send(self._adapter_chunks.popleft(), "adapter")

    def _is_stale(self, item: Outgoing) -> bool:
        """Live mode: drop a late frame and every later frame of its segment."""
        if item.segment is not None and item.segment == self._dropping_segment:
            self.dropped["stale"] += 1
            return True
        if self.live and item.captured_at is not None and time.time() - item.captured_at > STALE_FRAME_SECONDS:
            self._dropping_segment = item.segment
            self.dropped["stale"] += 1
            log.warning("camera %s: frame %s is %.1f s old; dropping the rest of segment %s", self.camera,
                        item.frame, time.time() - item.captured_at, item.segment)
            return True
        return False

    def _drop_oldest_segment(self) -> None:
        first = next((i.segment for i in self._main if isinstance(i.record, SegmentStart)), None)
        kept = deque(i for i in self._main if i.segment != first or first is None)
        self.dropped["backlog"] += len(self._main) - len(kept)
        log.warning("camera %s: send backlog over %d records; dropped segment %s", self.camera,
                    MAX_QUEUED_RECORDS, first)
        self._main = kept

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) % 2**32
        return self._sequence

    async def _send(self, message: bytes, kind: str) -> None:
        channel = self.connection.channel
        while channel.bufferedAmount and channel.bufferedAmount + len(message) > (limit := self._buffer_limit()):
            self._check_alive()
            self._drained.clear()
            channel.bufferedAmountLowThreshold = max(0, limit - len(message))  # wakes us when it fits
            try:
                await asyncio.wait_for(self._drained.wait(), HEARTBEAT_SECONDS / 4)
            except asyncio.TimeoutError:
                pass
        self._check_alive()
        self._hand(message, kind)

    def _hand(self, message: bytes, kind: str) -> None:
        self.connection.channel.send(message)
        self._handed_bytes += len(message)
        self.sent_bytes[kind] += len(message)

    def _buffer_limit(self) -> int:
        """How much unsent data the channel may hold before the next message: see LIVE_BUFFER_SECONDS."""
        self._drain.sample(time.monotonic(), self._handed_bytes - self.connection.channel.bufferedAmount)
        if not self.live:
            return HIGH_WATER_BYTES
        rate = self._drain.bytes_per_second()
        if rate is None:
            return MIN_LIVE_BUFFER_BYTES
        return int(min(HIGH_WATER_BYTES, rate * LIVE_BUFFER_SECONDS))

    def _check_alive(self) -> None:
        if self.connection.channel.readyState != "open":
            raise ConnectionLost("the data channel closed")
        if self.connection.pc.connectionState in ("failed", "closed"):
            raise ConnectionLost(f"the connection is {self.connection.pc.connectionState}")
        silent = time.monotonic() - self._last_ack
        if silent > HEARTBEAT_TIMEOUT_SECONDS:
            raise ConnectionLost(f"no heartbeat answer for {silent:.1f} s")

    def _send_heartbeat(self) -> int:
        """Send the next heartbeat (when the channel is open); return its number."""
        self._heartbeats_sent += 1
        if self.connection.channel.readyState == "open":
            self._frames_at_heartbeat.append((self._heartbeats_sent, self._frames_handed))
            self._hand(encode_control(MessageType.HEARTBEAT, self._next_sequence(),
                                      heartbeat_payload(self._heartbeats_sent, time.monotonic_ns())), "control")
        return self._heartbeats_sent

    async def _heartbeat(self) -> None:
        while True:
            self._send_heartbeat()
            self._ready.set()  # let the send loop check the connection even when idle
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def _on_message(self, data: bytes | str) -> None:
        if isinstance(data, str):
            log.warning("camera %s: text message from the receiver ignored", self.camera)
            return
        try:
            message = parse_message(data)
        except WireError as exc:
            log.warning("camera %s: bad message from the receiver: %s", self.camera, exc)
            return
        if message.kind == MessageType.HEARTBEAT_ACK:
            number, sent_ns = parse_heartbeat(message.payload)
            self._acked_heartbeat = max(self._acked_heartbeat, number)
            while self._frames_at_heartbeat and self._frames_at_heartbeat[0][0] <= number:
                self._frames_confirmed = self._frames_at_heartbeat.popleft()[1]
            self._last_ack = time.monotonic()
            self.rtt_seconds = (time.monotonic_ns() - sent_ns) / 1e9
        elif message.kind == MessageType.KEYFRAME_REQUEST:
            reason = message.payload.decode(errors="replace")
            log.info("camera %s: receiver asks for a keyframe (%r)", self.camera, reason[:200])
            self._on_keyframe_request(reason)  # what is queued still goes: the receiver skips what it cannot use


def _origin(url: str) -> tuple[str, str | None, int | None]:
    """Scheme, host and port, the default port filled in: what a URL must share with the WHIP
    endpoint to be sent the endpoint's token. A port that is not a number is no origin (None)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return scheme, None, None
    return scheme, parts.hostname, port or {"http": 80, "https": 443}.get(scheme)


def _kind(record: object) -> str:
    """The kind a record's bytes are counted under."""
    if isinstance(record, FrameRecord):
        return "latent"
    return "background" if isinstance(record, BackgroundRecord) else "control"
