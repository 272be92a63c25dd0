"""Camera capture: frames from an RTSP camera, a V4L2 device, a file or a test pattern, at the
configured size and rate, handed to the event loop with their capture time.

PyAV blocks, so each camera reads in its own thread and hands frames over through a bounded
queue; when the pipeline falls behind, the oldest frame waiting is dropped and counted (a
camera does not wait for us). A source that fails or stalls is reopened with exponential
backoff, forever; a file that is not looped ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import numpy as np

from adaptcast.sender.stats import CaptureStats
from adaptcast.shared import timecode
from adaptcast.shared.errors import VideoError
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.redact import redact_url
from adaptcast.shared.video import read_frames

log = logging.getLogger(__name__)

TEST_PATTERN = "testpattern"
QUEUE_SECONDS = 2.0
"""Frames waiting for the pipeline, in seconds of video, before the oldest is dropped (more in
segment mode, where the pipeline takes a whole segment at a time: CameraSource.queue_seconds)."""
FIRST_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class CameraSource:
    """Where one camera's frames come from, and how to read them."""

    name: str
    source: str
    size: FrameSize
    fps: float
    _: KW_ONLY
    loop: bool = True
    """Files only: play again from the start at the end."""
    connect_timeout_seconds: float = 5.0
    reconnect_max_seconds: float = 30.0
    queue_seconds: float = QUEUE_SECONDS
    timecode: bool = False
    """Burn the capture time into each frame (shared/timecode.py), for latency measurements."""

    @property
    def kind(self) -> str:
        if self.source == TEST_PATTERN:
            return "testpattern"
        if self.source.startswith(("rtsp://", "rtsps://")):
            return "rtsp"
        if self.source.startswith("/dev/video"):
            return "v4l2"
        return "file"


@dataclass(frozen=True)
class CapturedFrame:
    rgb: np.ndarray
    captured_at: float
    """Wall-clock time (time.time()) the frame was taken: the start of glass-to-glass latency."""


def test_pattern(size: FrameSize, fps: float) -> Iterator[np.ndarray]:
    """A moving scene with a static background, like a camera over a quiet street."""
    y, x = np.mgrid[0 : size.height, 0 : size.width]
    background = np.stack([x * 255 // max(1, size.width - 1), y * 255 // max(1, size.height - 1),
                           np.full_like(x, 96)], axis=-1).astype(np.uint8)
    box = max(8, size.height // 6)
    n = 0
    while True:
        frame = background.copy()
        left = int(n * 4 * 10 / fps) % max(1, size.width - box)
        top = size.height // 2 - box // 2
        frame[top : top + box, left : left + box] = (230, 60, 40)
        yield frame
        n += 1


class Capture:
    """Reads one camera in a thread; iterate over it (async) for its frames."""

    def __init__(self, camera: CameraSource) -> None:
        self.camera = camera
        self.state = "connecting"
        """connecting, live, reconnecting or ended."""
        self.dropped: Counter[str] = Counter()
        """Frames lost before the pipeline, by reason."""
        self.reconnects = 0
        self._queue: asyncio.Queue[CapturedFrame | None] = asyncio.Queue()
        self._limit = max(2, int(camera.queue_seconds * camera.fps))
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera.name}", daemon=True)
        self._thread.start()

    def stats(self) -> CaptureStats:
        return CaptureStats(live=self.state == "live", reconnects=self.reconnects, dropped=dict(self.dropped))

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        self._stop.set()

    def _hand_over(self, frame: CapturedFrame | None) -> None:
        """Runs on the event loop: a full queue loses its oldest frame, never the new one (and
        never a frame for the end marker, None)."""
        if frame is not None and self._queue.qsize() >= self._limit:
            self._queue.get_nowait()
            self.dropped["queue_full"] += 1
        self._queue.put_nowait(frame)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self.state:
            log.info("camera %s: capture %s%s", self.camera.name, state, f" ({detail})" if detail else "")
            self.state = state

    def _open(self) -> Iterator[np.ndarray]:
        camera = self.camera
        if camera.kind == "testpattern":
            return test_pattern(camera.size, camera.fps)
        options: dict = {}
        if camera.kind == "rtsp":
            # a small probe: FFmpeg's default reads ~2 s of a live stream before returning, then
            # hands those frames over in a burst stamped as new
            options = {"options": {"rtsp_transport": "tcp", "probesize": "32"},
                       "timeout": camera.connect_timeout_seconds}
        elif camera.kind == "v4l2":
            options = {"format": "v4l2", "timeout": camera.connect_timeout_seconds}
        elif not Path(camera.source).is_file():
            raise VideoError(f"{camera.source} is not a file")
        return read_frames(camera.source, camera.size, camera.fps, open_options=options)

    def _run(self) -> None:
        camera = self.camera
        paced = camera.kind in ("file", "testpattern")  # live sources come at their own pace
        backoff = FIRST_BACKOFF_SECONDS
        while not self._stop.is_set():
            try:
                started, count = time.monotonic(), 0
                for rgb in self._open():
                    if self._stop.is_set():
                        return
                    if paced:
                        delay = started + count / camera.fps - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    count += 1
                    self._set_state("live")
                    backoff = FIRST_BACKOFF_SECONDS
                    captured_at = time.time()
                    if camera.timecode:
                        rgb = timecode.stamp(rgb, captured_at)
                    self._loop.call_soon_threadsafe(self._hand_over, CapturedFrame(rgb, captured_at))
                if camera.kind == "file" and not camera.loop:
                    break
                if camera.kind != "file":
                    raise VideoError("the source ended")
            except VideoError as exc:
                self.reconnects += 1
                detail = redact_url(str(exc))  # FFmpeg's errors repeat the URL, login included
                self._set_state("reconnecting", detail)
                log.warning("camera %s: source failed (%s); reopening in %.1f s", camera.name, detail, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, camera.reconnect_max_seconds)
        self._set_state("ended")
        self._loop.call_soon_threadsafe(self._hand_over, None)
