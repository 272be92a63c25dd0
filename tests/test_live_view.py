"""The live view end to end: a real aiohttp server fed with the bundled clip at about 10 fps,
behind the viewer login, read by HTTP clients (Basic) and by the real headless Chromium, driven
over the DevTools protocol, which logs in through the page."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
import yarl
from aiohttp import web

import adaptcast.receiver.live
from adaptcast.receiver.h264feed import H264Feed
from adaptcast.receiver.live import CameraStatus, LiveView
from adaptcast.receiver.viewers import ViewerGate
from adaptcast.receiver.whep import WhepServer
from adaptcast.shared.config import H264Config, WhepConfig
from adaptcast.shared.frames import FrameSize, psnr
from adaptcast.shared.passwords import MIN_LOG2_N, hash_password
from adaptcast.shared.video import read_frames

CLIP = Path(__file__).resolve().parent.parent / "shared" / "data" / "parking-aisle-10s.mp4"
SIZE = FrameSize(320, 176)
FPS = 10.0
CAMERA = "gate"
ODD_CAMERA = "lobby <b>\"&'"
"""A second camera whose name would break a page that does not escape it."""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLIP_REGION = "({x, y, width, height}) => ({x, y, width, height, scale: 1})"
"""JavaScript: a DOMRect as the `clip` of Page.captureScreenshot."""
VIEWER, PASSWORD = "alice", "correct horse battery staple"
AUTH = {"Authorization": aiohttp.encode_basic_auth(VIEWER, PASSWORD)}


@functools.cache
def password_hash() -> str:
    """The viewer's hash at scrypt's lowest accepted cost: the tests check many passwords."""
    return hash_password(PASSWORD, log2_n=MIN_LOG2_N)


def viewer_gate(session_seconds: float = 3600.0, allowed_hosts: tuple[str, ...] = ()) -> ViewerGate:
    """The receiver's gate with one account, alice; no route is open (there is no WHIP here)."""
    return ViewerGate({VIEWER: password_hash()}, session_seconds, allowed_hosts, frozenset(), secure_cookie=False)


@functools.cache
def clip_frames() -> tuple[np.ndarray, ...]:
    return tuple(read_frames(CLIP, SIZE, fps=FPS, max_frames=40))


@asynccontextmanager
async def serving(view: LiveView, gate: ViewerGate | None = None,
                  whep: WhepServer | None = None) -> AsyncIterator[tuple[web.AppRunner, str]]:
    """The view (and WHEP, if given) behind `gate` (default: `viewer_gate()`) on a real server on a
    free loopback port; yields the runner and the base URL."""
    app = web.Application()
    (gate or viewer_gate()).add_routes(app)
    view.add_routes(app)
    if whep is not None:
        whep.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def publish_clip(view: LiveView, camera: str, feed: H264Feed | None = None) -> None:
    """Publish the clip in a loop at about FPS, as the receiver would, with a status per frame,
    to the view and to the camera's H.264 feed if given.

    A white square moves along the top of each frame, so that consecutive frames always differ
    even where the clip itself stands still.
    """
    frames = clip_frames()
    count = 0
    while True:
        rgb = frames[count % len(frames)].copy()
        x = (count * 16) % (SIZE.width - 16)
        rgb[:16, x : x + 16] = 255
        view.publish(camera, rgb)
        if feed is not None:
            feed.publish(rgb, time.time_ns() // 1000, FPS)
        count += 1
        view.update_status(
            camera,
            CameraStatus("live", FPS, 250_000.0, adapter_version=count // 10, frames=count, last_frame_at=time.time()),
        )
        await asyncio.sleep(1 / FPS)


async def cameras(http: aiohttp.ClientSession, base: str) -> list[dict]:
    async with http.get(base + "/api/cameras") as response:
        assert response.status == 200
        return await response.json()


def decode_jpeg(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def test_http_routes() -> None:
    asyncio.run(_http_routes())


async def _http_routes() -> None:
    view = LiveView()
    view.add_camera(CAMERA)
    async with serving(view) as (_, base), aiohttp.ClientSession(headers=AUTH) as http:
        assert await cameras(http, base) == [
            {
                "name": CAMERA,
                "state": "connecting",
                "fps": 0.0,
                "bitrate_bps": 0.0,
                "adapter_version": 0,
                "fallbacks": 0,
                "frames": 0,
                "skipped_frames": 0,
                "backgrounds": 0,
                "last_frame_at": None,
                "latency_p50_seconds": None,
                "latency_p95_seconds": None,
                "viewers": 0,
            }
        ]
        async with http.get(f"{base}/live/{CAMERA}.jpg") as response:
            assert response.status == 503
        for path in ("/live/nope.jpg", "/live/nope.mjpg", "/live/..%2Fgate.jpg", "/live/%2E%2E/static/live.js.jpg"):
            async with http.get(yarl.URL(base + path, encoded=True)) as response:
                assert response.status == 404, path
        async with http.get(base + "/") as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert "static/live.js" in await response.text()
        async with http.get(base + "/static/live.js") as response:
            assert response.status == 200

        frame = clip_frames()[0]
        view.publish(CAMERA, frame)
        view.update_status(CAMERA, CameraStatus("live", frames=1, last_frame_at=time.time()))
        async with http.get(f"{base}/live/{CAMERA}.jpg") as response:
            assert response.status == 200 and response.content_type == "image/jpeg"
            jpeg = await response.read()
        assert jpeg[:2] == b"\xff\xd8"
        picture = decode_jpeg(jpeg)
        assert picture.shape == frame.shape and psnr(picture, frame) > 30
        [status] = await cameras(http, base)
        assert status["state"] == "live" and status["frames"] == 1


def test_mjpeg_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    encodes = 0
    encode = adaptcast.receiver.live.encode_jpeg

    def counting_encode(rgb: np.ndarray) -> bytes:
        nonlocal encodes
        encodes += 1
        return encode(rgb)

    monkeypatch.setattr(adaptcast.receiver.live, "encode_jpeg", counting_encode)
    asyncio.run(_mjpeg_stream(lambda: encodes))


async def read_parts(response: aiohttp.ClientResponse, count: int) -> list[bytes]:
    reader = aiohttp.MultipartReader.from_response(response)
    parts = []
    for _ in range(count):
        part = await asyncio.wait_for(reader.next(), 5)
        assert part is not None and part.headers["Content-Type"] == "image/jpeg"
        parts.append(bytes(await part.read()))
    return parts


async def _mjpeg_stream(encodes: Callable[[], int]) -> None:
    view = LiveView()
    view.add_camera(CAMERA)
    publisher = asyncio.create_task(publish_clip(view, CAMERA))
    try:
        async with serving(view) as (runner, base), aiohttp.ClientSession(headers=AUTH) as http:
            await asyncio.sleep(0.3)
            assert encodes() == 0, "frames were encoded with nobody watching"
            first = await http.get(f"{base}/live/{CAMERA}.mjpg")
            second = await http.get(f"{base}/live/{CAMERA}.mjpg")
            assert first.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            first_parts, second_parts = await asyncio.gather(read_parts(first, 4), read_parts(second, 4))
            for jpeg in first_parts + second_parts:
                assert decode_jpeg(jpeg).shape == (SIZE.height, SIZE.width, 3)
            assert len(set(first_parts)) == 4, "each part is a new frame"
            [status] = await cameras(http, base)
            assert status["viewers"] == 2
            assert encodes() <= status["frames"], "one encode per frame, however many viewers"

            first.close()
            deadline = time.monotonic() + 3
            while (await cameras(http, base))[0]["viewers"] != 1:
                assert time.monotonic() < deadline, "the server kept streaming to a viewer that left"
                await asyncio.sleep(0.1)

            started = time.monotonic()
            await runner.cleanup()
            assert time.monotonic() - started < 3, "shutdown waited for the MJPEG stream"
            rest = await asyncio.wait_for(second.content.read(), 5)
            assert rest.endswith(b"--frame--\r\n"), "the stream did not end with the closing boundary"
            second.close()
    finally:
        publisher.cancel()


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


class DevTools:
    """Just enough of the Chrome DevTools protocol: one command at a time on one websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._last_id = 0
        self.errors: list[str] = []
        """Script exceptions, console errors and browser log errors seen on the way."""
        self._paused: list[dict] = []
        """Fetch.requestPaused events not taken yet."""

    def take(self, method: str) -> list[dict]:
        """The parameters of the `method` events (only Fetch.requestPaused is kept) seen since the last take."""
        assert method == "Fetch.requestPaused"
        events, self._paused = self._paused, []
        return events

    async def call(self, method: str, session: str | None = None, **params: object) -> dict:
        self._last_id += 1
        message: dict[str, object] = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._socket.send_json(message)
        while True:
            reply = await asyncio.wait_for(self._socket.receive_json(), 10)
            if reply.get("id") == self._last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self._note(reply)

    async def evaluate(self, session: str, expression: str) -> object:
        result = await self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def screenshot(self, session: str, **params: object) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", session, format="png", **params))["data"])

    def _note(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Fetch.requestPaused":
            self._paused.append(params)
        elif event.get("method") == "Runtime.exceptionThrown":
            self.errors.append(str(params["exceptionDetails"]))
        elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(str(params["args"]))
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            if not params["entry"].get("url", "").endswith("/favicon.ico"):
                self.errors.append(params["entry"]["text"])


@asynccontextmanager
async def chromium(path: str, profile: Path, *flags: str) -> AsyncIterator[DevTools]:
    """Headless Chromium with a fresh profile and `flags`, connected over its DevTools websocket.

    Its WebRTC offers name host addresses, not mDNS names (.local), which aiortc cannot resolve:
    a browser on another machine gives addresses through its other candidates (docs/streaming.md).
    """
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(
        [
            path,
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            *flags,
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        active_port = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 15
        while not (active_port.exists() and len(active_port.read_text().splitlines()) >= 2):
            assert process.poll() is None, f"Chromium exited: see {log.name}"
            assert time.monotonic() < deadline, f"Chromium did not open its DevTools port: see {log.name}"
            await asyncio.sleep(0.1)
        port, browser_path = active_port.read_text().splitlines()[:2]
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{port}{browser_path}", max_msg_size=0) as socket:
                yield DevTools(socket)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def chromium_or_skip() -> str:
    """Chromium's path; the test is skipped without it, or fails under ADAPTCAST_REQUIRE_BROWSER=1."""
    path = find_chromium()
    if path is None:
        reason = f"no Chromium binary on PATH (looked for {', '.join(CHROMIUM_NAMES)}); apt-get install chromium"
        if os.environ.get("ADAPTCAST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (ADAPTCAST_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    return path


def test_page_in_chromium(tmp_path: Path) -> None:
    """The page without WHEP (the receiver's `whep.enabled: false`): each card falls back to MJPEG."""
    asyncio.run(_page_in_chromium(chromium_or_skip(), tmp_path))


async def new_page(devtools: DevTools, width: int = 1024, height: int = 600) -> str:
    """A new tab of `width` x `height` CSS pixels; its DevTools session."""
    target = await devtools.call("Target.createTarget", url="about:blank")
    attached = await devtools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
    session = attached["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        await devtools.call(f"{domain}.enable", session)
    await devtools.call(
        "Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1, mobile=False
    )
    return session


def card_of(camera: str) -> str:
    """JavaScript: the card of `camera`."""
    return f"[...document.querySelectorAll('.camera')].find(card => card.dataset.camera === {camera!r})"


async def wait_for(devtools: DevTools, session: str, expression: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await devtools.evaluate(session, expression):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {expression}"
        await asyncio.sleep(0.1)


async def _page_in_chromium(path: str, tmp_path: Path) -> None:
    view = LiveView()
    view.add_camera(CAMERA)
    view.add_camera(ODD_CAMERA)
    publisher = asyncio.create_task(publish_clip(view, CAMERA))
    card = card_of(CAMERA)
    frames_shown = f"Number({card}.querySelector('[data-field=frames]').textContent)"
    try:
        async with serving(view) as (_, base), chromium(path, tmp_path / "profile") as devtools:
            session = await new_page(devtools)
            blank = await devtools.screenshot(session)

            await devtools.call("Page.navigate", session, url=base + "/")
            await wait_for(devtools, session, "document.forms[0]?.action.endsWith('/login')", 8)
            assert await devtools.evaluate(session, "document.querySelectorAll('main.camera, #cameras').length") == 0
            await log_in(devtools, session, "wrong password")
            await wait_for(devtools, session, "document.querySelector('.error')?.textContent.includes('Wrong')", 8)
            await log_in(devtools, session, PASSWORD)
            await wait_for(devtools, session, f"{card}?.querySelector('img').naturalWidth > 0", 8)
            assert await devtools.evaluate(session, f"{card}.querySelector('img').naturalWidth") == SIZE.width
            assert await devtools.evaluate(session, f"{card}.dataset.transport") == "mjpeg"
            assert await devtools.evaluate(session, f"{card}.querySelector('[data-field=transport]').textContent") \
                == "MJPEG (WebRTC: offer refused: HTTP 404)"
            assert await displayed_size(devtools, session, f"{card}.querySelector('img')") == SIZE
            odd = card_of(ODD_CAMERA)
            assert await devtools.evaluate(session, f"""[{odd}.querySelector('.placeholder').innerText,
                {odd}.querySelector('img').getBoundingClientRect().width]""") == ["connecting\u2026", 0]

            rect = f"{card}.querySelector('img').getBoundingClientRect()"
            region = await devtools.evaluate(session, f"({CLIP_REGION})({rect})")
            frames_before = await devtools.evaluate(session, frames_shown)
            picture_before = await devtools.screenshot(session, clip=region)
            await asyncio.sleep(1.0)
            frames_after = await devtools.evaluate(session, frames_shown)
            picture_after = await devtools.screenshot(session, clip=region)
            assert frames_after > frames_before, "the frame counter on the page does not advance"
            assert picture_after != picture_before, "the picture on the page does not change"
            [watched, unwatched] = await cameras_of(base)
            assert watched["viewers"] == 1 and unwatched["viewers"] == 1

            headings = await devtools.evaluate(
                session, "[...document.querySelectorAll('.camera h2')].map(h => h.textContent)"
            )
            assert headings == [CAMERA, ODD_CAMERA]
            assert await devtools.evaluate(session, "document.querySelectorAll('main b').length") == 0

            screenshot = await devtools.screenshot(session)
            (tmp_path / "live-view.png").write_bytes(screenshot)
            assert screenshot.startswith(PNG_SIGNATURE)
            assert struct.unpack(">II", screenshot[16:24]) == (1024, 600)
            assert len(screenshot) > 2 * len(blank), "the page looks blank"
            # the one error: the answer to the wrong password
            # the errors: the answer to the wrong password, and each card's refused WHEP offer
            assert sorted(devtools.errors) == [
                "Failed to load resource: the server responded with a status of 403 (Forbidden)",
                *["Failed to load resource: the server responded with a status of 404 (Not Found)"] * 2,
            ]
            await devtools.evaluate(session, "document.querySelector('header form').submit()")
            await wait_for(devtools, session, "document.forms[0]?.action.endsWith('/login')", 8)
    finally:
        publisher.cancel()


async def log_in(devtools: DevTools, session: str, password: str) -> None:
    """Fill in the login form as a person would and send it."""
    await devtools.evaluate(session, f"""(() => {{
        const form = document.forms[0];
        form.elements.name.value = {VIEWER!r};
        form.elements.password.value = {password!r};
        form.requestSubmit();
    }})()""")


async def cameras_of(base: str) -> list[dict]:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        return await cameras(http, base)


async def displayed_size(devtools: DevTools, session: str, element: str) -> FrameSize:
    """The size `element` (JavaScript) takes on the page, in CSS pixels."""
    width, height = await devtools.evaluate(
        session, f"(({{width, height}}) => [width, height])({element}.getBoundingClientRect())")
    return FrameSize(round(width), round(height))


@asynccontextmanager
async def whep_station(*flags: str, profile: Path) -> AsyncIterator[tuple[str, H264Feed, WhepServer, DevTools]]:
    """The live view with WHEP, its camera's clip published to it and to its H.264 feed as the
    receiver's session does, and Chromium (started with `flags`) logged in on a page of it;
    yields the base URL, the feed, the WHEP server and Chromium."""
    view, feed = LiveView(), H264Feed(CAMERA, H264Config(preset="ultrafast", bitrate_kbps=500))
    view.add_camera(CAMERA)
    whep = WhepServer({CAMERA: feed}, WhepConfig())
    publisher = asyncio.create_task(publish_clip(view, CAMERA, feed))
    try:
        async with serving(view, whep=whep) as (_, base), chromium(chromium_or_skip(), profile, *flags) as devtools:
            yield base, feed, whep, devtools
    finally:
        publisher.cancel()
        await feed.close()


async def open_live_view(devtools: DevTools, base: str, session: str | None = None) -> str:
    """A tab (`session`, or a new one) logged in on the live view; its DevTools session."""
    session = session or await new_page(devtools)
    await devtools.call("Page.navigate", session, url=base + "/")
    await wait_for(devtools, session, "document.forms[0]?.action.endsWith('/login')", 8)
    await log_in(devtools, session, PASSWORD)
    await wait_for(devtools, session, f"{card_of(CAMERA)} !== undefined", 8)
    return session


def test_webrtc_in_chromium(tmp_path: Path) -> None:
    """The page plays the camera over WHEP at its own size, and ends the session when it is left."""
    asyncio.run(_webrtc_in_chromium(tmp_path))


async def _webrtc_in_chromium(tmp_path: Path) -> None:
    card = card_of(CAMERA)
    video = f"{card}.querySelector('video')"
    async with whep_station(profile=tmp_path / "profile") as (base, feed, whep, devtools):
        session = await open_live_view(devtools, base)
        await wait_for(devtools, session, f"Number({video}.dataset.frames) > 20", 30)
        assert await devtools.evaluate(session, f"{card}.dataset.transport") == "webrtc"
        assert await devtools.evaluate(session, f"{card}.querySelector('[data-field=transport]').textContent") \
            == "WebRTC"
        assert await devtools.evaluate(session, f"[{video}.videoWidth, {video}.videoHeight]") \
            == [SIZE.width, SIZE.height]
        assert await displayed_size(devtools, session, video) == SIZE, "not shown at the camera's own size"
        assert await devtools.evaluate(session, f"{card}.querySelector('.placeholder').hidden")
        assert await devtools.evaluate(session, f"{card}.querySelector('img').hidden"), "MJPEG ran beside WebRTC"
        assert feed.clients("whep") == 1 and len(whep.sessions) == 1 and feed.frames_encoded > 20
        screenshot = await devtools.screenshot(session)
        (tmp_path / "live-view-webrtc.png").write_bytes(screenshot)
        await devtools.call("Page.navigate", session, url="about:blank")
        deadline = time.monotonic() + 5  # its DELETE or its closing connection, before the viewer timeout (10 s)
        while whep.sessions:
            assert time.monotonic() < deadline, "leaving the page did not end its WHEP session"
            await asyncio.sleep(0.1)
        assert feed.clients("whep") == 0
        assert devtools.errors == []


def unreachable(sdp: str) -> str:
    """`sdp` with each ICE candidate's port made 9 (discard), where nothing answers."""
    return re.sub(r"^(a=candidate:\S+ \d+ \S+ \d+ \S+ )\d+", r"\g<1>9", sdp, flags=re.MULTILINE)


async def block_ice(devtools: DevTools, session: str) -> None:
    """Let the WHEP requests the page made meanwhile go on, with every candidate in the offer and the
    answer made unreachable: a network where WebRTC's UDP does not get through (neither end can reach
    the other, not even through the addresses ICE learns from the other's checks)."""
    for event in devtools.take("Fetch.requestPaused"):
        request, paused = event["request"], event["requestId"]
        if "responseStatusCode" not in event:
            body = request.get("postData")
            changed = {"postData": base64.b64encode(unreachable(body).encode()).decode()} if body else {}
            await devtools.call("Fetch.continueRequest", session, requestId=paused, **changed)
        elif request["method"] == "POST" and event["responseStatusCode"] == 201:
            answer = await devtools.call("Fetch.getResponseBody", session, requestId=paused)
            await devtools.call("Fetch.fulfillRequest", session, requestId=paused, responseCode=201,
                                responseHeaders=event["responseHeaders"],
                                body=base64.b64encode(unreachable(answer["body"]).encode()).decode())
        else:
            await devtools.call("Fetch.continueRequest", session, requestId=paused)


def test_webrtc_blocked_falls_back_to_mjpeg(tmp_path: Path) -> None:
    """A browser whose WebRTC cannot reach the receiver (ICE fails) shows the camera over MJPEG."""
    asyncio.run(_webrtc_blocked(tmp_path))


async def _webrtc_blocked(tmp_path: Path) -> None:
    card = card_of(CAMERA)
    img = f"{card}.querySelector('img')"
    async with whep_station(profile=tmp_path / "profile") as (base, feed, whep, devtools):
        session = await new_page(devtools)
        await devtools.call("Fetch.enable", session, patterns=[
            {"urlPattern": "*/whep/*", "requestStage": stage} for stage in ("Request", "Response")])
        session = await open_live_view(devtools, base, session)
        deadline = time.monotonic() + 20
        while not await devtools.evaluate(session, f"{img}.naturalWidth > 0 && !{img}.hidden"):
            assert time.monotonic() < deadline, "the page did not fall back to MJPEG"
            await block_ice(devtools, session)
            await asyncio.sleep(0.1)
        assert await devtools.evaluate(session, f"{card}.dataset.transport") == "mjpeg"
        assert (await devtools.evaluate(session, f"{card}.querySelector('[data-field=transport]').textContent")) \
            .startswith("MJPEG (WebRTC: ")
        assert await devtools.evaluate(session, f"{card}.querySelector('video').hidden")
        assert await displayed_size(devtools, session, img) == SIZE
        frames_shown = f"Number({card}.querySelector('[data-field=frames]').textContent)"
        region = await devtools.evaluate(session, f"({CLIP_REGION})({img}.getBoundingClientRect())")
        before = await devtools.screenshot(session, clip=region)
        await asyncio.sleep(1.0)
        assert await devtools.screenshot(session, clip=region) != before, "the MJPEG picture does not change"
        assert await devtools.evaluate(session, frames_shown) > 0
        deadline = time.monotonic() + 5  # the page ended the session it gave up on
        while whep.sessions:
            assert time.monotonic() < deadline, "the failed WHEP session was left open"
            await block_ice(devtools, session)  # lets the page's DELETE through
            await asyncio.sleep(0.1)
