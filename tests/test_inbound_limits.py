"""A peer cannot grow the receiver's memory below the framing: an SCTP message that never ends,
or data past a gap that is never filled, loses the peer its association once it holds more than
the limit (shared/wire/inbound_limits.py). A real receiver process and an aiortc peer on loopback,
a real WHIP exchange, then DATA chunks crafted below the data channel and sent through the
client's own SCTP transport, while the receiver process's memory is watched."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    USERDATA_MAX_LENGTH,
    DataChunk,
    InboundStream,
    RTCSctpTransport,
)

from adaptcast.demo import free_port
from adaptcast.sender.transport import WhipConnection
from tests.test_whip import _gate_receiver, _wait_ready, answer_offer, listen

WEBRTC_BINARY = 53
"""The SCTP payload protocol of a binary data-channel message (RFC 8831)."""
FLOOD_BYTES = 200 * 1024**2
MAX_GROWTH_BYTES = 64 * 1024**2
FLOOD_SECONDS = 120
"""Without the limit the flood grows memory past MAX_GROWTH_BYTES well before this."""
BATCH_CHUNKS = 32
"""Chunks sent before the event loop lets the receiver (in this process) read them."""


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read())[1]) * 1024


def test_the_aiortc_internals_the_limit_relies_on_are_there():
    """shared/wire/inbound_limits.py wraps these private names of aiortc and aioice: a new version
    that renames them must fail here, not silently lose the limit."""
    assert callable(RTCSctpTransport._receive_chunk)
    assert "reassembly" in vars(InboundStream())
    source = RTCSctpTransport.__init__.__code__.co_names
    assert "_advertised_rwnd" in source and "_inbound_streams" in source

    async def queue() -> object:
        pc = RTCPeerConnection()
        pc.createDataChannel("data")
        connection = pc.sctp.transport.transport._connection
        await pc.close()
        return connection._queue

    assert type(asyncio.run(queue())) is asyncio.Queue


async def _flood(sctp: RTCSctpTransport, stream_id: int, gaps: bool, receiver: int) -> tuple[int, int]:
    """Send DATA chunks on `stream_id` until FLOOD_BYTES, FLOOD_SECONDS or the association is gone:
    one message that never ends (no E flag), or, with `gaps`, whole messages that start one TSN
    and one stream sequence number past the expected ones, so that none is ever delivered.
    The bytes sent and the largest growth of the `receiver` process's memory seen."""
    baseline = _rss_bytes(receiver)
    tsn = sctp._local_tsn + gaps
    sequence = sctp._outbound_stream_seq.get(stream_id, 0) + gaps
    payload = bytes(USERDATA_MAX_LENGTH)  # aiortc's DTLS reads at most 1500 bytes a record
    sent = growth = 0
    started = time.monotonic()
    while sent < FLOOD_BYTES and sctp.state != "closed" and time.monotonic() - started < FLOOD_SECONDS:
        for _ in range(BATCH_CHUNKS):
            chunk = DataChunk(flags=SCTP_DATA_FIRST_FRAG | SCTP_DATA_LAST_FRAG if gaps
                              else SCTP_DATA_FIRST_FRAG if sent == 0 else 0)
            chunk.tsn, chunk.stream_id, chunk.protocol, chunk.user_data = tsn % 2**32, stream_id, WEBRTC_BINARY, payload
            chunk.stream_seq = sequence % 2**16
            try:
                await sctp._send_chunk(chunk)
            except ConnectionError:  # ICE gave up: the receiver stopped answering its consent checks
                return sent, growth
            tsn += 1
            sequence += gaps
            sent += len(payload)
        await asyncio.sleep(0.002)
        growth = max(growth, _rss_bytes(receiver) - baseline)
        if growth > MAX_GROWTH_BYTES:
            break
    return sent, growth


@pytest.mark.parametrize("gaps", [False, True], ids=["never_ending_message", "gaps"])
def test_a_flood_below_the_data_channel_is_bounded_and_loses_its_association(tmp_path, monkeypatch, model_file, gaps):
    port = free_port(0)
    _gate_receiver(tmp_path, monkeypatch, model_file, port, heartbeat_timeout_seconds=60)
    base = f"http://127.0.0.1:{port}"

    async def scenario(receiver: int) -> tuple[int, int, str, str]:
        await _wait_ready(base)
        connection = WhipConnection(f"{base}/whip/gate", "right-token-0123456789", timeout=8)
        await connection.open()
        sctp = connection.pc.sctp
        sent, growth = await _flood(sctp, connection.channel.id, gaps, receiver)
        for _ in range(100):  # the receiver closes the session in a task of its own
            async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
                text = await response.text()
            if 'adaptcast_receiver_connected{camera="gate"} 0.0' in text:
                break
            await asyncio.sleep(0.1)
        state = sctp.state
        await connection.close()
        return sent, growth, state, text

    with open(tmp_path / "receiver.log", "wb") as log:
        receiver = subprocess.Popen([sys.executable, "-m", "adaptcast", "receiver", "--config",
                                     str(tmp_path / "receiver.yaml")], stdout=log, stderr=subprocess.STDOUT)
        try:
            sent, growth, state, metrics = asyncio.run(scenario(receiver.pid))
        finally:
            receiver.terminate()
            receiver.wait(30)
    assert growth < MAX_GROWTH_BYTES, f"memory grew by {growth / 2**20:.0f} MiB after {sent / 2**20:.0f} MiB sent"
    assert state == "closed", f"the association survived {sent / 2**20:.0f} MiB"
    assert sent < 32 * 1024**2  # the abort came near the 4 MiB limit, not at the end of the flood
    assert 'adaptcast_receiver_sctp_aborts_total{camera="gate",reason="buffered_bytes"} 1.0' in metrics
    assert 'adaptcast_receiver_connected{camera="gate"} 0.0' in metrics


def test_a_sender_flooded_by_its_receiver_loses_the_association_not_its_memory():
    """The sender only ever receives control messages, so a peer at the receiver's address (one
    impersonated over plain HTTP signaling, say) that floods it below the data channel costs it
    the association, as at the receiver. A hand-made WHIP endpoint answers with an aiortc peer
    that then sends one never-ending message to the sender in this process."""
    peers: list[RTCPeerConnection] = []

    async def answer(request: web.Request) -> web.Response:
        return await answer_offer(request, peers, "/whip/gate/s1")

    async def scenario() -> tuple[int, int, str]:
        app = web.Application()
        app.router.add_post("/whip/gate", answer)
        runner, base = await listen(app)
        try:
            connection = WhipConnection(f"{base}/whip/gate", "right-token-0123456789", timeout=8)
            await connection.open()
            sent, growth = await _flood(peers[0].sctp, connection.channel.id, False, os.getpid())
            state = connection.pc.sctp.state
            await connection.pc.close()
            return sent, growth, state
        finally:
            for pc in peers:
                await pc.close()
            await runner.cleanup()

    sent, growth, state = asyncio.run(scenario())
    assert state == "closed", f"the association survived {sent / 2**20:.0f} MiB"
    assert sent < 32 * 1024**2 and growth < MAX_GROWTH_BYTES
