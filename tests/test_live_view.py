"""The live view end to end: a real aiohttp server fed with the bundled clip at about 10 fps,
behind the viewer login, read by HTTP clients (Basic) and by the real headless Chromium, driven
over the DevTools protocol, which logs in through the page."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import os
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

import receiver.live
from receiver.h264feed import H264Feed
from receiver.live import CameraStatus, LiveView
from receiver.viewers import ViewerGate
from receiver.whep import WhepServer
from shared.frames import FrameSize, psnr
from shared.passwords import MIN_LOG2_N, hash_password
from shared.video import read_frames

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
    encode = receiver.live.encode_jpeg

    def counting_encode(rgb: np.ndarray) -> bytes:
        nonlocal encodes
        encodes += 1
        return encode(rgb)

    monkeypatch.setattr(receiver.live, "encode_jpeg", counting_encode)
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
        if event.get("method") == "Runtime.exceptionThrown":
            self.errors.append(str(params["exceptionDetails"]))
        elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(str(params["args"]))
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            if not params["entry"].get("url", "").endswith("/favicon.ico"):
                self.errors.append(params["entry"]["text"])


@asynccontextmanager
async def chromium(path: str, profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with a fresh profile, connected over its DevTools websocket."""
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


def test_page_in_chromium(tmp_path: Path) -> None:
    path = find_chromium()
    if path is None:
        reason = f"no Chromium binary on PATH (looked for {', '.join(CHROMIUM_NAMES)}); apt-get install chromium"
        if os.environ.get("ADAPTCAST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (ADAPTCAST_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    asyncio.run(_page_in_chromium(path, tmp_path))


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
    card = f"[...document.querySelectorAll('.camera')].find(card => card.dataset.camera === {CAMERA!r})"
    frames_shown = f"Number({card}.querySelector('[data-field=frames]').textContent)"
    try:
        async with serving(view) as (_, base), chromium(path, tmp_path / "profile") as devtools:
            target = await devtools.call("Target.createTarget", url="about:blank")
            attached = await devtools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
            session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await devtools.call(f"{domain}.enable", session)
            await devtools.call(
                "Emulation.setDeviceMetricsOverride", session, width=1024, height=600, deviceScaleFactor=1, mobile=False
            )
            blank = await devtools.screenshot(session)

            await devtools.call("Page.navigate", session, url=base + "/")
            await wait_for(devtools, session, "document.forms[0]?.action.endsWith('/login')", 8)
            assert await devtools.evaluate(session, "document.querySelectorAll('main.camera, #cameras').length") == 0
            await log_in(devtools, session, "wrong password")
            await wait_for(devtools, session, "document.querySelector('.error')?.textContent.includes('Wrong')", 8)
            await log_in(devtools, session, PASSWORD)
            await wait_for(devtools, session, f"{card}?.querySelector('img').naturalWidth > 0", 8)
            assert await devtools.evaluate(session, f"{card}.querySelector('img').naturalWidth") == SIZE.width

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
            assert devtools.errors == ["Failed to load resource: the server responded with a status of 403 (Forbidden)"]
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
