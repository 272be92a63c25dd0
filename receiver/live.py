"""The live view: each camera's latest decoded frame, and its figures, shown in a browser.

The receiver calls `LiveView.publish` for every decoded frame. Browsers watch the cameras as
MJPEG streams (`multipart/x-mixed-replace`), which every browser plays in a plain `<img>`
without plug-ins or scripts. Only the latest frame of each camera is kept, never a queue, so
a slow viewer skips frames instead of falling behind, and a camera nobody watches costs no
encoding at all. Each frame is JPEG-encoded at most once, off the event loop, however many
viewers there are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Literal

import av
import numpy as np
from aiohttp import web

from adaptcast.shared.resources import resource_path

log = logging.getLogger(__name__)

STATIC_DIR = resource_path("adaptcast.receiver", "static")

CameraState = Literal["connecting", "live", "stalled", "offline"]

_BOUNDARY = "frame"
_IDLE_CHECK_SECONDS = 1.0
"""How often a stream waiting for a frame checks that its viewer is still there: aiohttp does
not cancel a handler when its client goes away, so a stalled camera would otherwise keep the
handler of a closed page alive until shutdown."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass
class CameraStatus:
    """What the page shows beside a camera's picture; the receiver computes it."""

    state: CameraState = "connecting"
    """"connecting" until the first frame, "live" while frames arrive, "stalled" when the
    session is up but frames stopped, "offline" when the sender is gone."""
    fps: float = 0.0
    """Decoded frames per second over the last few seconds."""
    bitrate_bps: float = 0.0
    """Received bits per second, adapters included."""
    adapter_version: int = 0
    """Version of the adapter in use; 0 is the base model."""
    fallbacks: int = 0
    """Segments decoded with the base model because their adapter was missing or bad."""
    frames: int = 0
    """Frames decoded since the receiver started."""
    skipped_frames: int = 0
    """Of those, frames the sender skipped (the previous picture shown again)."""
    backgrounds: int = 0
    """Background pictures received since the receiver started."""
    last_frame_at: float | None = None
    """`time.time()` of the latest decoded frame, None before the first."""
    latency_p50_seconds: float | None = None
    """Median glass-to-glass latency (capture to decoded frame) over the recent frames."""
    latency_p95_seconds: float | None = None


@dataclass
class _Feed:
    """One camera's latest frame, its JPEG once someone asked for it, and its viewers."""

    status: CameraStatus = field(default_factory=CameraStatus)
    frame: np.ndarray | None = None
    seq: int = 0
    """Number of frames published; identifies `frame`."""
    jpeg: bytes = b""
    jpeg_seq: int = 0
    """The `seq` of the frame `jpeg` was encoded from; 0 when nothing is encoded yet."""
    encoding: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while encoding, so that viewers asking at once share one encode."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set, and replaced by a fresh event, on every new frame and on shutdown."""
    viewers: int = 0

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """A uint8 H x W x 3 RGB frame as a baseline JPEG (full-range 4:2:0, FFmpeg's defaults)."""
    context = av.CodecContext.create("mjpeg", "w")
    context.width, context.height = rgb.shape[1], rgb.shape[0]
    context.pix_fmt = "yuvj420p"
    context.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuvj420p")
    packets = context.encode(frame) + context.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def _file_handler(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    """A handler serving one fixed file of the page; nothing in the URL picks the file."""

    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / name, headers=_SECURITY_HEADERS)

    return handler


class LiveView:
    """The cameras' latest frames and figures, served to browsers over aiohttp.

    All methods run on the event loop thread; encoding runs in worker threads.
    """

    def __init__(self) -> None:
        self._feeds: dict[str, _Feed] = {}
        self._closing = False

    def add_camera(self, camera: str) -> None:
        """Show `camera` (from the configuration) before its first frame; adding it again does nothing."""
        if camera not in self._feeds:
            self._feeds[camera] = _Feed()
            log.info("camera %s: added to the live view", camera)

    def publish(self, camera: str, rgb: np.ndarray) -> None:
        """Make `rgb` (uint8 H x W x 3) the camera's latest frame.

        The array is kept, not copied: do not write into it afterwards. Nothing is encoded
        here; a viewer encodes the latest frame when it is ready for one.
        """
        feed = self._feed(camera)
        feed.frame = rgb
        feed.seq += 1
        feed.notify()

    def update_status(self, camera: str, status: CameraStatus) -> None:
        """Replace the figures shown for `camera`."""
        self._feed(camera).status = status

    def add_routes(self, app: web.Application) -> None:
        """Serve the page, the cameras' figures and their pictures on `app`."""
        app.router.add_get("/", _file_handler("index.html"))
        app.router.add_get("/static/live.js", _file_handler("live.js"))
        app.router.add_get("/static/live.css", _file_handler("live.css"))
        app.router.add_get("/api/cameras", self._cameras)
        app.router.add_get("/live/{camera}.jpg", self._snapshot)
        app.router.add_get("/live/{camera}.mjpg", self._mjpeg, allow_head=False)
        app.on_shutdown.append(self._shutdown)

    def _feed(self, camera: str) -> _Feed:
        try:
            return self._feeds[camera]
        except KeyError:
            raise KeyError(f"camera {camera!r} is not in the live view: add_camera it first") from None

    def _requested_feed(self, request: web.Request) -> tuple[str, _Feed]:
        """The camera named in the URL; only known names match, so no path can be smuggled in."""
        camera = request.match_info["camera"]
        feed = self._feeds.get(camera)
        if feed is None:
            raise web.HTTPNotFound(text="unknown camera\n")
        return camera, feed

    async def _latest_jpeg(self, feed: _Feed) -> tuple[bytes, int]:
        """The JPEG of the latest frame and its sequence number, encoding it if nobody has yet."""
        async with feed.encoding:
            if feed.jpeg_seq != feed.seq and feed.frame is not None:
                frame, seq = feed.frame, feed.seq
                feed.jpeg = await asyncio.to_thread(encode_jpeg, frame)
                feed.jpeg_seq = seq
            return feed.jpeg, feed.jpeg_seq

    async def _cameras(self, request: web.Request) -> web.Response:
        cameras = [
            {"name": name, **asdict(feed.status), "viewers": feed.viewers} for name, feed in self._feeds.items()
        ]
        return web.json_response(cameras, headers=_NO_STORE)

    async def _snapshot(self, request: web.Request) -> web.Response:
        camera, feed = self._requested_feed(request)
        if feed.frame is None:
            raise web.HTTPServiceUnavailable(text=f"no frame from {camera} yet\n", headers={"Retry-After": "1"})
        jpeg, _ = await self._latest_jpeg(feed)
        return web.Response(body=jpeg, content_type="image/jpeg", headers=_NO_STORE)

    async def _mjpeg(self, request: web.Request) -> web.StreamResponse:
        """Send each new frame as one part; frames published while a part is on its way are skipped."""
        camera, feed = self._requested_feed(request)
        response = web.StreamResponse(
            headers={**_NO_STORE, "Content-Type": f"multipart/x-mixed-replace; boundary={_BOUNDARY}"}
        )
        await response.prepare(request)
        feed.viewers += 1
        sent, sent_seq = 0, 0
        log.info("camera %s: MJPEG viewer %s joined (%d watching)", camera, request.remote, feed.viewers)
        try:
            while not self._closing:
                if feed.seq == sent_seq:
                    try:
                        await asyncio.wait_for(feed.changed.wait(), _IDLE_CHECK_SECONDS)
                    except asyncio.TimeoutError:
                        if request.transport is None or request.transport.is_closing():
                            break
                    continue
                jpeg, sent_seq = await self._latest_jpeg(feed)
                head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                await response.write(head.encode() + jpeg + b"\r\n")
                sent += 1
            if self._closing:
                await response.write(f"--{_BOUNDARY}--\r\n".encode())
        except ConnectionResetError:
            pass
        finally:
            feed.viewers -= 1
            log.info("camera %s: MJPEG viewer %s left after %d frames", camera, request.remote, sent)
        return response

    async def _shutdown(self, app: web.Application) -> None:
        """End every MJPEG stream now, rather than after aiohttp's shutdown timeout."""
        self._closing = True
        for feed in self._feeds.values():
            feed.notify()
