"""A bound on what a peer can make aiortc's SCTP association hold in memory.

aiortc (checked against 1.16.0) keeps every incoming DATA chunk until its message is complete
and in order: the chunks of an unfinished message, and everything received past a gap in the
TSNs or stream sequence numbers, stay in its inbound streams' reassembly lists. It advertises a
1 MiB receive window but keeps accepting past it, and it does not enforce the max-message-size
it advertises (64 KiB), so a peer that never ends a message, or leaves a gap, grows the
process's memory without bound, below the 16 KiB framing that the application checks.

`limit_inbound` wraps one association's chunk handler: after each incoming chunk it measures
what the association holds (the user data aiortc counts against its own window, plus an
allowance for each held chunk's Python objects) and the inbound streams it keeps state for,
and past either limit aborts the association (an SCTP ABORT, then the transport is stopped)
and says why. A compliant peer never comes near the limits: it keeps at most its congestion
window in flight, and our messages are at most 16 KiB.

It relies on these private names of RTCSctpTransport, which tests/test_sctp_limits.py checks:
`_receive_chunk` (the per-chunk handler, wrapped on the instance), `_advertised_rwnd` (lowered
by each held chunk's user data, raised as messages are delivered or pruned) and
`_inbound_streams` (stream id -> InboundStream, whose `reassembly` list holds the chunks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiortc.rtcsctptransport import Chunk, RTCSctpTransport

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


@dataclass
class _HeldData:
    """What an association holds for its peer, measured after a chunk."""

    bytes: int
    chunks: int
    streams: int


class _InboundGuard:
    def __init__(self, transport: RTCSctpTransport, limits: InboundLimits,
                 on_exceeded: Callable[[str, str], None]) -> None:
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

    async def _abort(self, reason: str, detail: str) -> None:
        self.tripped = True
        await self.transport.stop()  # sends ABORT, stops reading, closes the data channels
        self.on_exceeded(reason, detail)


def limit_inbound(transport: RTCSctpTransport, limits: InboundLimits,
                  on_exceeded: Callable[[str, str], None]) -> None:
    """Abort `transport`'s association when its peer makes it hold more than `limits` allow.

    Install it before the association starts (right after the peer connection has created its
    SCTP transport). `on_exceeded(reason, detail)` is called once, after the abort: reason is
    `buffered_bytes` or `streams`, detail says how much was held, for the log.
    """
    guard = _InboundGuard(transport, limits, on_exceeded)
    transport._receive_chunk = guard.receive_chunk  # type: ignore[method-assign]
