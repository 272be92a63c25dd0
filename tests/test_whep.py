"""WHEP without a browser: aiortc viewers play a camera from the real endpoint (real aiohttp app,
viewer gate, H.264 feed fed with the bundled clip), and what the endpoint refuses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiortc import RTCPeerConnection
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from adaptcast.receiver.h264feed import H264Feed
from adaptcast.receiver.live import LiveView
from adaptcast.receiver.whep import WhepServer
from adaptcast.shared.config import H264Config, WhepConfig
from tests.conftest import REPO
from tests.test_live_view import AUTH, CAMERA, PASSWORD, SIZE, VIEWER, publish_clip, serving
from tests.whep_client import Viewer, recvonly_offer

SDP = {"Content-Type": "application/sdp"}


@asynccontextmanager
async def whep_station(config: WhepConfig, h264: H264Config = H264Config(preset="ultrafast", bitrate_kbps=500),
                       ) -> AsyncIterator[tuple[str, H264Feed, WhepServer]]:
    """The live view and WHEP of one camera whose feed gets the clip at 10 fps, served on loopback;
    yields the base URL, the feed and the WHEP server."""
    view, feed = LiveView(), H264Feed(CAMERA, h264)
    view.add_camera(CAMERA)
    whep = WhepServer({CAMERA: feed}, config)
    publisher = asyncio.create_task(publish_clip(view, CAMERA, feed))
    try:
        async with serving(view, whep=whep) as (_, base):
            yield base, feed, whep
    finally:
        publisher.cancel()
        await feed.close()


async def eventually(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.1)


async def offer_of(setup: Callable[[RTCPeerConnection], object]) -> str:
    """The offer of an aiortc peer after `setup(pc)`."""
    pc = RTCPeerConnection()
    try:
        setup(pc)
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def test_whep_plays_ends_and_refuses() -> None:
    asyncio.run(_whep_plays_ends_and_refuses())


async def _whep_plays_ends_and_refuses() -> None:
    async with whep_station(WhepConfig(max_sessions=2)) as (base, feed, whep), \
            aiohttp.ClientSession(headers=AUTH) as http:
        url = f"{base}/whep/{CAMERA}"
        good = await recvonly_offer(pc := RTCPeerConnection())
        await pc.close()
        async with aiohttp.ClientSession() as stranger:
            async with stranger.post(url, data=good, headers=SDP) as response:
                assert response.status == 401
        async with http.post(url, data=good, headers={**SDP, "Origin": "http://evil.example"}) as response:
            assert response.status == 403
        async with http.post(f"{base}/whep/nope", data=good, headers=SDP) as response:
            assert response.status == 404
        async with http.post(url, data=good) as response:
            assert response.status == 415
        refusals = {
            "an audio section too": await offer_of(lambda pc: (pc.addTransceiver("video", direction="recvonly"),
                                                              pc.addTransceiver("audio", direction="recvonly"))),
            "a data channel": await offer_of(lambda pc: pc.createDataChannel("x")),
            "sending video": await offer_of(lambda pc: pc.addTransceiver("video", direction="sendrecv")),
            "not SDP": "hello",
        }
        for what, offer in refusals.items():
            async with http.post(url, data=offer, headers=SDP) as response:
                assert response.status == 400, what
        vp8_only = await recvonly_offer(pc := RTCPeerConnection(), codec="video/VP8")
        await pc.close()
        async with http.post(url, data=vp8_only, headers=SDP) as response:
            assert response.status == 400 and "H.264" in await response.text()
        assert feed.clients("whep") == 0 and not whep.sessions, "a refused offer left a session"

        first = await Viewer.start(http, url)
        assert first.location.startswith(f"{base}/whep/{CAMERA}/")
        second = await Viewer.start(http, url)
        await asyncio.wait_for(asyncio.gather(first.first_frame.wait(), second.first_frame.wait()), 20)
        async with http.post(url, data=good, headers=SDP) as response:
            assert response.status == 503 and int(response.headers["Retry-After"]) > 0
        await eventually(lambda: len(first.sizes) >= 20, 20, "20 frames decoded")
        assert set(first.sizes) == {(SIZE.width, SIZE.height)}
        assert feed.clients("whep") == 2 and whep.sessions_of(CAMERA) == 2
        assert feed.bytes_sent["whep"] > 0
        assert all(type(s.pc.getTransceivers()[0].sender.transport.transport._connection._queue).__name__
                   == "_DatagramQueue" for s in whep.sessions.values()), "the datagram queue is not bounded"

        async with http.delete(first.location + "x") as response:
            assert response.status == 404
        async with http.delete(first.location, headers={"Origin": "http://evil.example"}) as response:
            assert response.status == 403
        async with http.delete(first.location) as response:
            assert response.status == 200
        assert feed.clients("whep") == 1 and len(whep.sessions) == 1
        await first.close()
        await second.close()  # the peer closes: the server sees its connection end
        await eventually(lambda: not whep.sessions, 10, "the closed peer's session ended")
        assert feed.clients("whep") == 0
        assert whep.refused == {"bad_origin": 2, "unknown_camera": 1, "bad_offer": 5, "no_h264": 1,
                                "too_many_sessions": 1}


def test_a_viewer_that_vanishes_loses_its_session() -> None:
    asyncio.run(_a_viewer_that_vanishes())


async def _a_viewer_that_vanishes() -> None:
    async with whep_station(WhepConfig(viewer_timeout_seconds=3)) as (base, feed, whep):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.whep_client", f"{base}/whep/{CAMERA}", VIEWER, PASSWORD,
            stdout=subprocess.PIPE, cwd=REPO, env=env)
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line == b"playing\n"
            assert feed.clients("whep") == 1 and len(whep.sessions) == 1
        finally:
            process.kill()  # no DELETE, no DTLS close: the viewer is just gone
            await process.wait()
        # 3 s without receiver reports, where ICE consent would take 30 s
        await eventually(lambda: feed.clients("whep") == 0 and not whep.sessions, 12,
                         "the vanished viewer's session ended")


def test_a_viewers_picture_loss_report_brings_a_keyframe() -> None:
    """aiortc hands a viewer's PLI to the feed, which answers with a keyframe although its periodic
    one is a minute away; a flood of them costs one keyframe a second, not one a report."""
    asyncio.run(_picture_loss())


async def _picture_loss() -> None:
    h264 = H264Config(preset="ultrafast", bitrate_kbps=500, keyframe_interval_seconds=60)
    async with whep_station(WhepConfig(), h264) as (base, feed, whep), aiohttp.ClientSession(headers=AUTH) as http:
        viewer = await Viewer.start(http, f"{base}/whep/{CAMERA}")
        await asyncio.wait_for(viewer.first_frame.wait(), 30)
        await asyncio.sleep(1.5)
        (session,) = whep.sessions.values()
        sender = session.pc.getSenders()[0]
        before = viewer.keyframes
        assert before == 1, "only the keyframe a joining client gets"
        for _ in range(5):  # what the viewer's RTCP would carry, through aiortc's own handling
            await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc))
        await eventually(lambda: viewer.keyframes > before, 5, "a keyframe after the picture-loss reports")
        await asyncio.sleep(0.5)
        assert viewer.keyframes == before + 1, "five reports at once bring one keyframe"
        await viewer.close()


def test_whep_disabled_is_not_served() -> None:
    async def check() -> None:
        async with whep_station(WhepConfig(enabled=False)) as (base, _, _), \
                aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base}/whep/{CAMERA}", data="v=0", headers=SDP) as response:
                assert response.status == 404
    asyncio.run(check())
