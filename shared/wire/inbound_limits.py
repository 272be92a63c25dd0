"""A bound on what a peer can make aiortc hold in memory for it, below the application's framing.

aiortc (checked against aiortc 1.16.0 and aioice 0.10) keeps every incoming DATA chunk until
its message is complete and in order: the chunks of an unfinished message, and everything
received past a gap in the TSNs or stream sequence numbers, stay in its inbound streams'
reassembly lists. It advertises a 1 MiB receive window but keeps accepting past it, and it does
not enforce the max-message-size it advertises (64 KiB), so a peer that never ends a message,
or leaves a gap, grows the process's memory without bound (and its CPU: aiortc rescans what it
holds on every chunk). Below it, aioice queues every datagram it receives, without a bound,
until DTLS and SCTP have read it: a peer that sends faster than they decrypt grows that queue.

`limit_inbound` installs two bounds on one peer connection:

- its SCTP chunk handler is wrapped: after each incoming chunk it measures what the association
  holds (the user data aiortc counts against its own window, plus an allowance for each held
  chunk's Python objects) and the inbound streams it keeps state for, and past either limit
  aborts the association (an SCTP ABORT, then the transport is stopped) and says why;
- its ICE connection's datagram queue holds at most `max_queued_bytes`: past it datagrams are
  dropped, as a full socket buffer would drop them, and SCTP resends what it needs.

A compliant peer never comes near the limits: it keeps at most its congestion window in flight,
and our messages are at most 16 KiB.

It relies on these private names, which tests/test_inbound_limits.py checks:
RTCSctpTransport's `_receive_chunk` (the per-chunk handler, wrapped on the instance),
`_advertised_rwnd` (lowered by each held chunk's user data, raised as messages are delivered or
pruned) and `_inbound_streams` (stream id -> InboundStream, whose `reassembly` list holds the
chunks); RTCIceTransport's `_connection` (the aioice Connection) and its `_queue` (the datagrams
received, as (data, component) tuples, or None when the connection is lost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from aiortc import RTCIceTransport, RTCPeerConnection
from aiortc.rtcsctptransport import Chunk, RTCSctpTransport

AbortReason = Literal["buffered_bytes", "streams"]
ABORT_REASONS: tuple[AbortReason, ...] = get_args(AbortReason)
"""Why an association is aborted: it holds more of the peer's data than allowed, or more inbound streams."""
CHUNK_OVERHEAD_BYTES = 512
"""Memory a held chunk takes besides its user data (the DataChunk object and its attributes, its
place in a reassembly list and in the set of misordered TSNs), so that a flood of tiny chunks is
charged for what it really costs (about 450 bytes measured on CPython 3.11)."""


@dataclass(frozen=True)
class InboundLimits:
    """What one SCTP association may hold for a peer before it is aborted."""

    max_buffered_bytes: int = 4 * 1024 * 1024
    """Bytes held in reassembly (user data plus CHUNK_OVERHEAD_BYTES a chunk): unfinished or
    out-of-order messages. Also bounds any single message: one larger cannot be assembled."""
    max_streams: int = 64
    """Inbound streams the association keeps state for (each data channel uses one)."""
    max_queued_bytes: int = 2 * 1024 * 1024
    """Datagrams received and not yet read by DTLS (a socket buffer holds about 200 KiB)."""


@dataclass
class _HeldData:
    """What an association holds for its peer, measured after a chunk."""

    bytes: int
    chunks: int
    streams: int


class _InboundGuard:
    def __init__(self, transport: RTCSctpTransport, limits: InboundLimits,
                 on_exceeded: Callable[[AbortReason, str], None]) -> None:
        self.transport = transport
        self.limits = limits
        self.on_exceeded = on_exceeded
        self.tripped = False
        self._window = transport._advertised_rwnd
        """The receive window before any data: what it is lowered by is the user data held."""
        self._receive_chunk = transport._receive_chunk

    def held(self) -> _HeldData:
        streams = self.transport._inbound_streams
        chunks = sum(len(stream.reassembly) for stream in streams.values())
        user_data = self._window - self.transport._advertised_rwnd
        return _HeldData(user_data + chunks * CHUNK_OVERHEAD_BYTES, chunks, len(streams))

    async def receive_chunk(self, chunk: Chunk) -> None:
        if self.tripped:  # the rest of the packet that crossed the limit
            return
        await self._receive_chunk(chunk)
        if len(self.transport._inbound_streams) > self.limits.max_streams:
            await self._abort("streams", f"{len(self.transport._inbound_streams)} inbound streams")
            return
        held = self.held()
        if held.bytes > self.limits.max_buffered_bytes:
            await self._abort("buffered_bytes", f"{held.bytes} bytes held in {held.chunks} chunks")

    async def _abort(self, reason: AbortReason, detail: str) -> None:
        self.tripped = True
        await self.transport.stop()  # sends ABORT, stops reading, closes the data channels
        self.on_exceeded(reason, detail)


class _DatagramQueue(asyncio.Queue[tuple[bytes, int] | None]):
    """aioice's queue of received datagrams, holding at most `max_bytes` of them: more are dropped."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.bytes = 0

    def put_nowait(self, item: tuple[bytes, int] | None) -> None:
        if item is not None:  # None says the connection is lost: always queued
            if self.bytes + len(item[0]) > self.max_bytes:
                return
            self.bytes += len(item[0])
        super().put_nowait(item)

    def _get(self) -> tuple[bytes, int] | None:
        item = super()._get()
        if item is not None:
            self.bytes -= len(item[0])
        return item


def limit_inbound(pc: RTCPeerConnection, limits: InboundLimits,
                  on_exceeded: Callable[[AbortReason, str], None]) -> None:
    """Bound what `pc`'s peer can make it hold: abort its SCTP association past `limits`, drop
    datagrams past its queue's limit.

    Install it once the connection has its SCTP transport (after setRemoteDescription of an
    offer with a data channel, or createDataChannel) and before it connects. `on_exceeded(reason,
    detail)` is called once, after an abort: reason is `buffered_bytes` or `streams`, detail says
    how much was held, for the log.
    """
    sctp = pc.sctp
    if sctp is None:
        raise ValueError("limit_inbound needs the connection's SCTP transport: install it after the data channel "
                         "exists")
    guard = _InboundGuard(sctp, limits, on_exceeded)
    sctp._receive_chunk = guard.receive_chunk  # type: ignore[method-assign]
    limit_datagram_queue(sctp.transport.transport, limits.max_queued_bytes)


def limit_datagram_queue(transport: RTCIceTransport, max_bytes: int) -> None:
    """Keep at most `max_bytes` of the datagrams `transport` received and DTLS has not read yet;
    past it datagrams are dropped. For connections without SCTP too (media only, such as WHEP's):
    install it before the connection connects."""
    transport._connection._queue = _DatagramQueue(max_bytes)
