"""The RTSP camera path against a real RTSP server (GStreamer's, in tests/rtsp_server.py, run by
the system Python in its own process) serving the bundled clip as H.264: frames arrive, and the
capture reconnects by itself when the server goes away (killed, or hung without closing the
connection) and comes back on the same port, with nobody touching it.

Skipped when /usr/bin/python3 cannot load GStreamer's RTSP server, unless
ADAPTCAST_REQUIRE_RTSP=1 (CI sets it after installing the packages), where that is a failure.
"""

from __future__ import annotations

import asyncio
import functools
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from adaptcast.demo import free_port
from adaptcast.sender.capture import CameraSource, Capture, CapturedFrame
from adaptcast.shared.frames import FrameSize, psnr
from adaptcast.shared.video import read_frames
from tests.conftest import CLIP, REPO
from tests.test_streaming import Station, station_factory  # noqa: F401  (a fixture, used below)

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = REPO / "tests" / "rtsp_server.py"
REQUIRE_ENV = "ADAPTCAST_REQUIRE_RTSP"
PACKAGES = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-libav")
"""What provides it on Debian (.ci/run installs the same list)."""
SIZE, FPS, TIMEOUT = FrameSize(160, 96), 10.0, 2.0
MATCH_DB = 25.0
"""A received frame is the clip's when it is this close to one of the clip's frames."""

PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
need = ["appsrc", "videoconvert", "x264enc", "rtph264pay", "qtdemux", "h264parse", "decodebin"]
missing = [name for name in need if Gst.ElementFactory.find(name) is None]
if not any(Gst.ElementFactory.find(name) for name in ("avdec_h264", "openh264dec")):
    missing.append("an H.264 decoder (avdec_h264 or openh264dec)")
print(" ".join(missing))
"""


@functools.cache
def rtsp_server_missing() -> str | None:
    """Why tests/rtsp_server.py cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"no {SYSTEM_PYTHON}"
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return f"{SYSTEM_PYTHON} took over 60 s to load GStreamer"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"{SYSTEM_PYTHON} cannot load GStreamer's RTSP server through PyGObject ({last})"
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()}"
    return None


class RtspServer:
    """tests/rtsp_server.py serving the clip at rtsp://127.0.0.1:PORT/cam; restartable on its port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port(0)
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([SYSTEM_PYTHON, str(SERVER_SCRIPT), str(CLIP), str(self.port)],
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().strip() if ready else ""
        if line != "ready":
            self.process.kill()
            pytest.fail(f"the RTSP server did not start on port {self.port} (said {line!r}):\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it; a SIGTERM must end it cleanly (exit status 0)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"the RTSP server ignored signal {sig}:\n{self.logs()}")
        if sig == signal.SIGTERM:
            assert code == 0, f"the RTSP server exited with {code} on SIGTERM:\n{self.logs()}"

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and the port accepts, but nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def rtsp_server(tmp_path):
    reason = rtsp_server_missing()
    if reason is not None:
        reason += f"; apt-get install {PACKAGES}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
        pytest.skip(reason)
    server = RtspServer(tmp_path / "rtsp-server.log")
    server.start()
    yield server
    if server.process is not None:
        server.resume()  # a frozen process ignores SIGTERM until it runs again
        server.stop(signal.SIGKILL)


@functools.cache
def clip_frames() -> tuple[np.ndarray, ...]:
    return tuple(read_frames(CLIP, SIZE))


def assert_from_the_clip(frames: list[CapturedFrame]) -> None:
    """The right shape, moving, and each frame (a sample of them) one of the clip's."""
    assert all(f.rgb.shape == (SIZE.height, SIZE.width, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert any(not np.array_equal(frames[0].rgb, f.rgb) for f in frames[1:]), "every frame is the same"
    for frame in frames[:: max(1, len(frames) // 4)]:
        best = max(psnr(frame.rgb, c) for c in clip_frames())
        assert best >= MATCH_DB, f"a received frame is none of the clip's (best match {best:.1f} dB)"


class Watch:
    """A capture and everything it has yielded, collected by a task of its own."""

    def __init__(self, url: str) -> None:
        self.capture = Capture(CameraSource("rtsp-cam", url, SIZE, FPS, connect_timeout_seconds=TIMEOUT,
                                            reconnect_max_seconds=TIMEOUT))
        self.frames: list[CapturedFrame] = []
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for frame in self.capture.frames():
            self.frames.append(frame)

    def since(self, wall_time: float) -> list[CapturedFrame]:
        return [f for f in self.frames if f.captured_at > wall_time]

    async def until(self, condition: Callable[[], bool], timeout: float, what: str, server: RtspServer) -> float:
        started = time.monotonic()
        while not condition():
            if self.task.done():
                pytest.fail(f"the capture ended while waiting for {what}")
            if time.monotonic() - started > timeout:
                pytest.fail(f"timed out after {timeout} s waiting for {what}: state {self.capture.state}, "
                            f"{self.capture.reconnects} reconnects, {len(self.frames)} frames, dropped "
                            f"{dict(self.capture.dropped)}; server log:\n{server.logs()}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def close(self) -> None:
        self.capture.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _live(watch: Watch, server: RtspServer, after: float, timeout: float, what: str) -> float:
    """Wait for ten fresh frames, live, from the clip."""
    took = await watch.until(lambda: len(watch.since(after)) >= 10 and watch.capture.state == "live",
                             timeout, what, server)
    assert_from_the_clip(watch.since(after))
    return took


async def _capture_survives_a_server_restart(server: RtspServer) -> None:
    watch = Watch(server.url)
    try:
        await _live(watch, server, 0.0, 20, "the first frames")
        assert watch.capture.reconnects == 0

        server.stop(signal.SIGKILL)  # a crash: the connection drops
        await watch.until(lambda: watch.capture.state == "reconnecting" and watch.capture.reconnects >= 1,
                          5, "the capture to notice the server is gone", server)
        await watch.until(lambda: watch.capture.reconnects >= 2, 5, "a failed reopen while it is down", server)

        restarted = time.time()
        server.start()
        await _live(watch, server, restarted, 15, "frames after the restart")
    finally:
        await watch.close()


def test_capture_reconnects_when_the_rtsp_server_restarts(rtsp_server):
    asyncio.run(_capture_survives_a_server_restart(rtsp_server))


async def _capture_survives_a_hung_server(server: RtspServer) -> None:
    watch = Watch(server.url)
    try:
        await _live(watch, server, 0.0, 20, "the first frames")
        server.pause()  # no EOF, no reset: only the read timeout can tell
        # a read times out after TIMEOUT; the depacketiser's last frame comes out on the first
        # timeout, so it takes two
        await watch.until(lambda: watch.capture.state == "reconnecting", 3 * TIMEOUT + 2,
                          "the capture to notice the server hangs", server)
        # and reopening, which connects (the kernel still accepts) but never gets an answer, times out too
        await watch.until(lambda: watch.capture.reconnects >= 2, 2 * TIMEOUT + 3, "a timed-out reopen", server)
        resumed_at = time.time()
        server.resume()
        await _live(watch, server, resumed_at, 15, "frames after the server answers again")
    finally:
        await watch.close()


def test_capture_gives_up_on_a_hung_rtsp_server_and_comes_back(rtsp_server):
    asyncio.run(_capture_survives_a_hung_server(rtsp_server))


def test_rtsp_camera_streams_to_the_receiver_across_a_server_restart(rtsp_server, station_factory):  # noqa: F811
    """The real daemons, as processes: the sender's camera is the RTSP URL."""
    station: Station = station_factory(source=rtsp_server.url, loop=True)
    config_path = station.tmp / "sender.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["cameras"][0].update(connect_timeout_seconds=TIMEOUT, reconnect_max_seconds=TIMEOUT)
    config_path.write_text(yaml.safe_dump(config))

    def frames() -> int:
        return station.camera().get("frames", 0)

    station.start_receiver()
    station.start_sender()
    station.wait_for(lambda: frames() >= 10, 45, "frames from the RTSP camera at the receiver")
    rtsp_server.stop(signal.SIGKILL)
    station.wait_for(lambda: b"capture reconnecting" in (station.tmp / "sender.log").read_bytes(), 10,
                     "the sender to notice the RTSP server is gone")
    before = frames()
    rtsp_server.start()
    station.wait_for(lambda: frames() >= before + 10, 20, "frames after the RTSP server restarts")
    assert station.sender.poll() is None and station.receiver.poll() is None
