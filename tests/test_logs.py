"""Log lines carry no credentials and no attacker-chosen control characters.

Real components: PyAV opening an RTSP URL with a login (nothing listens on its port, so it
fails at once) and the receiver's real WHIP server answering a request whose camera name is
hostile.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from adaptcast.demo import free_port
from adaptcast.receiver.server import WhipServer
from adaptcast.sender.capture import CameraSource, Capture
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.redact import redact_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:hunter2@192.0.2.10:554/stream1", "rtsp://***@192.0.2.10:554/stream1"),
        ("cannot open rtsps://u:p@ss@cam/x: refused: 'rtsps://u:p@ss@cam/x'",
         "cannot open rtsps://***@cam/x: refused: 'rtsps://***@cam/x'"),
        ("rtsp://192.0.2.10/stream1", "rtsp://192.0.2.10/stream1"),
        ("/srv/clips/me@home.mp4 and http://rx/whip/a@b", "/srv/clips/me@home.mp4 and http://rx/whip/a@b"),
    ],
)
def test_redact_url_hides_the_login_of_every_url_and_nothing_else(text, expected):
    assert redact_url(text) == expected


def test_a_failing_rtsp_camera_logs_its_url_without_the_password(caplog):
    """FFmpeg's error repeats the URL, login included; the capture's log lines must not."""
    caplog.set_level(logging.INFO, logger="adaptcast.sender.capture")
    url = f"rtsp://admin:hunter2-secret@127.0.0.1:{free_port(0)}/cam"

    async def scenario() -> None:
        capture = Capture(CameraSource("gate", url, FrameSize(64, 64), 5.0, connect_timeout_seconds=2))
        try:
            for _ in range(200):
                if capture.reconnects:
                    break
                await asyncio.sleep(0.05)
        finally:
            capture.close()
        assert capture.reconnects

    asyncio.run(scenario())
    failed = [m for m in caplog.messages if "source failed" in m]
    assert failed and "rtsp://***@127.0.0.1" in failed[0]
    assert not any("hunter2" in m for m in caplog.messages)


def test_a_refused_whip_request_logs_its_camera_name_quoted_and_cut(caplog):
    """The camera name comes from the request path: a line break or an ANSI escape in it must
    not forge a log line or drive the operator's terminal, and a long one is cut."""
    hostile = "gate\nWARNING receiver: all cameras deleted \x1b[2J" + "x" * 500
    path = "/whip/" + quote(hostile, safe="")

    async def scenario() -> int:
        app = web.Application()
        WhipServer({}, {"gate": "right-token-0123456789"}).add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port(0)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as http, http.post(
                    URL(f"http://127.0.0.1:{port}{path}", encoded=True), data="v=0",
                    headers={"Authorization": "Bearer nope", "Content-Type": "application/sdp"}) as response:
                return response.status
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == 401
    refused = [r.getMessage() for r in caplog.records if "signaling refused" in r.getMessage()]
    assert len(refused) == 1
    assert "\n" not in refused[0] and "\x1b" not in refused[0]
    assert refused[0].startswith("camera 'gate\\nWARNING receiver: all cameras deleted \\x1b[2J")
    assert len(refused[0]) < 150
