"""The receiver re-publishes each camera over RTSP, read by a client nobody here wrote (FFmpeg):
a real receiver in this process, a real sender streaming the bundled clip at 320x240 to it, and
`ffmpeg -rtsp_transport tcp|udp` pulling 10 s; what FFmpeg decodes is what the receiver showed,
up to the re-encode. Viewer accounts guard it (Basic). Three clients at once cost one encode and
no decoded frame.

Skipped when /usr/bin/python3 cannot load GStreamer's RTSP server or ffmpeg is missing, unless
ADAPTCAST_REQUIRE_RTSP=1 (CI sets it after installing the packages), where that is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from adaptcast.demo import ViewerLogin, free_port
from adaptcast.receiver.daemon import run_receiver
from adaptcast.receiver.h264feed import H264Feed
from adaptcast.receiver.rtsp import RtspServer, RtspUnavailable, unavailable_reason
from adaptcast.receiver.session import CameraSession
from adaptcast.shared.config import H264Config, RtspConfig, load_receiver_config
from adaptcast.shared.frames import psnr
from adaptcast.shared.passwords import MIN_LOG2_N, hash_password
from tests.conftest import CLIP, REPO
from tests.test_rtsp import PACKAGES, REQUIRE_ENV, rtsp_server_missing
from tests.test_streaming import _self_signed_certificate
from tests.test_whip import _wait_ready
from tests.whep_client import Viewer

WIDTH, HEIGHT, FPS = 320, 240, 10.0
PULL_SECONDS = 10
MIN_PSNR_DB = 40.0
TOKEN_ENV, TOKEN = "ADAPTCAST_TOKEN_CAM1", "test-token-1-0123456789"


@pytest.fixture
def rtsp_ready() -> None:
    reason = rtsp_server_missing()
    if reason is not None:
        reason += f"; apt-get install {PACKAGES}"
    elif shutil.which("ffmpeg") is None:
        reason = "no ffmpeg (the third-party RTSP client); apt-get install ffmpeg"
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
        pytest.skip(reason)


def _instances(monkeypatch: pytest.MonkeyPatch, cls: type) -> list:
    """Every instance of `cls` made from now on (the receiver builds them inside run_receiver)."""
    made: list = []
    original = cls.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(cls, "__init__", init)
    return made


@dataclass
class Station:
    """A receiver in this process serving RTSP, fed by a sender process streaming the clip in a loop."""

    url: str
    viewer: ViewerLogin
    feed: H264Feed
    session: CameraSession
    rtsp: RtspServer
    fps: float
    shown: list[np.ndarray] = field(default_factory=list)
    """Every picture the receiver decoded (what its H.264 feed was given), in order."""

    def rtsp_url(self, credentials: bool = True, scheme: str = "rtsp") -> str:
        auth = f"{self.viewer.name}:{self.viewer.password}@" if credentials else ""
        return f"{scheme}://{auth}127.0.0.1:{self.rtsp.port}/cam1"


@contextlib.asynccontextmanager
async def _station(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_file: Path,
                   fps: float = FPS, rtsp_tls: bool = False) -> AsyncIterator[Station]:
    port, rtsp_port = free_port(0), free_port(0)
    viewer = ViewerLogin.random()
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    rtsp: dict = {"enabled": True, "host": "127.0.0.1", "port": rtsp_port}
    if rtsp_tls:
        cert_file, key_file = _self_signed_certificate(tmp_path)
        rtsp["tls"] = {"cert_file": str(cert_file), "key_file": str(key_file)}
    (tmp_path / "receiver.yaml").write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port}, "model": str(model_file), "device": "cpu",
        "cameras": [{"name": "cam1", "token_env": TOKEN_ENV}], "viewers": [viewer.config()],
        "rtsp": rtsp,
    }))
    (tmp_path / "sender.yaml").write_text(yaml.safe_dump({
        "receiver": {"url": f"http://127.0.0.1:{port}"}, "model": str(model_file), "device": "cpu",
        "metrics": {"port": 0},
        "cameras": [{"name": "cam1", "source": str(CLIP), "loop": True, "size": f"{WIDTH}x{HEIGHT}", "fps": fps,
                     "segment_seconds": 1.0, "mode": "live", "adapt": False, "token_env": TOKEN_ENV}],
    }))
    feeds, sessions, servers = (_instances(monkeypatch, cls) for cls in (H264Feed, CameraSession, RtspServer))
    shown: list[np.ndarray] = []
    publish = H264Feed.publish

    def recording_publish(self: H264Feed, rgb: np.ndarray, captured_us: int, fps: float) -> None:
        shown.append(rgb)
        publish(self, rgb, captured_us, fps)

    monkeypatch.setattr(H264Feed, "publish", recording_publish)
    stop = asyncio.Event()
    receiver = asyncio.create_task(run_receiver(load_receiver_config(tmp_path / "receiver.yaml"), stop))
    sender = None
    try:
        await _wait_ready(f"http://127.0.0.1:{port}")
        with open(tmp_path / "sender.log", "wb") as log:
            sender = subprocess.Popen([sys.executable, "-m", "adaptcast", "sender", "--config",
                                       str(tmp_path / "sender.yaml")], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
        station = Station(f"http://127.0.0.1:{port}", viewer, feeds[0], sessions[0], servers[0], fps, shown)
        for _ in range(600):
            if station.session.frames >= 20:
                break
            assert sender.poll() is None, (tmp_path / "sender.log").read_text()[-3000:]
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no frames decoded in 60 s:\n" + (tmp_path / "sender.log").read_text()[-3000:])
        yield station
    finally:
        if sender is not None:
            sender.send_signal(signal.SIGKILL)
            sender.wait()
        stop.set()
        await receiver


async def _ffmpeg(url: str, transport: str, output: Path) -> subprocess.CompletedProcess:
    """FFmpeg pulls PULL_SECONDS of `url` over `transport` and records it as it came (no decoding
    while the receiver runs: the clients of a station run on other machines, not on its cores)."""
    process = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", transport, "-i", url, "-t", str(PULL_SECONDS),
        "-c", "copy", "-y", str(output.with_suffix(".mkv")), stderr=asyncio.subprocess.PIPE)
    _, errors = await asyncio.wait_for(process.communicate(), PULL_SECONDS + 60)
    return subprocess.CompletedProcess(["ffmpeg"], process.returncode, "", errors.decode(errors="replace"))


def _decoded(output: Path) -> np.ndarray:
    """What FFmpeg decodes of its recording, as RGB pictures."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(output.with_suffix(".mkv")), "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-y", str(output)], check=True, timeout=120)
    return np.fromfile(output, np.uint8).reshape(-1, HEIGHT, WIDTH, 3)


async def _rtsp_status(port: int, authorization: str | None) -> int:
    """The status code of a DESCRIBE of cam1 (with this Authorization header, if any)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    header = f"Authorization: {authorization}\r\n" if authorization else ""
    writer.write(f"DESCRIBE rtsp://127.0.0.1:{port}/cam1 RTSP/1.0\r\nCSeq: 1\r\n{header}\r\n".encode())
    status = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    return int(status.split()[1])


def _assert_shows_what_the_receiver_showed(station: Station, output: Path, errors: str) -> None:
    """FFmpeg's pictures, in order, each one the receiver decoded (re-encode aside), about 10 s of them."""
    pulled = _decoded(output)
    assert len(pulled) >= 0.8 * PULL_SECONDS * station.fps, (len(pulled), errors)
    last = 0
    for index, picture in enumerate(pulled):
        # the earliest match at or after the previous one's (the receiver repeats a picture at times)
        match = next((at for at in range(last, len(station.shown)) if psnr(picture, station.shown[at]) >= MIN_PSNR_DB),
                     None)
        if match is None:
            best = max(psnr(picture, shown) for shown in station.shown)
            raise AssertionError(f"picture {index} of {len(pulled)} is none of the receiver's from picture {last} on "
                                 f"(best match anywhere {best:.1f} dB)")
        last = match

def test_ffmpeg_reads_a_camera_over_rtsp_with_a_viewer_account(rtsp_ready, tmp_path, monkeypatch, model_file):
    async def scenario() -> None:
        async with _station(tmp_path, monkeypatch, model_file) as station:
            port = station.rtsp.port
            wrong = "Basic " + base64.b64encode(f"{station.viewer.name}:wrong".encode()).decode()
            assert await _rtsp_status(port, None) == 401
            assert await _rtsp_status(port, wrong) == 401
            assert await _rtsp_status(port, "Basic !!") == 401
            denied = await _ffmpeg(station.rtsp_url(credentials=False), "tcp", tmp_path / "denied.rgb")
            assert denied.returncode != 0 and "401" in denied.stderr, denied.stderr
            assert station.rtsp.refused["login_failed"] == 2
            assert station.feed.clients("rtsp") == 0 and station.feed.frames_encoded == 0, "nobody watched"
            for transport in ("tcp", "udp"):
                del station.shown[:]
                pulled = await _ffmpeg(station.rtsp_url(), transport, tmp_path / f"{transport}.rgb")
                assert pulled.returncode == 0, pulled.stderr
                _assert_shows_what_the_receiver_showed(station, tmp_path / f"{transport}.rgb", pulled.stderr)
            for _ in range(100):  # the child reports the last client leaving; the feed then stops encoding
                if station.feed.clients("rtsp") == 0 and not station.feed._clients:
                    break
                await asyncio.sleep(0.1)
            assert not station.feed._clients, "nothing is encoded once no one watches"

    asyncio.run(scenario())


def test_rtsps_keeps_the_viewers_password_off_the_wire(rtsp_ready, tmp_path, monkeypatch, model_file):
    """With `rtsp.tls` the server speaks TLS only: FFmpeg plays rtsps:// (what it decodes is what
    the receiver showed) and a plain rtsp:// request, which would carry the password in clear
    text, gets no RTSP answer."""

    async def scenario() -> None:
        async with _station(tmp_path, monkeypatch, model_file, rtsp_tls=True) as station:
            plain = await _ffmpeg(station.rtsp_url(), "tcp", tmp_path / "plain.rgb")
            assert plain.returncode != 0, "plain RTSP is refused"
            del station.shown[:]
            pulled = await _ffmpeg(station.rtsp_url(scheme="rtsps"), "tcp", tmp_path / "tls.rgb")
            assert pulled.returncode == 0, pulled.stderr
            _assert_shows_what_the_receiver_showed(station, tmp_path / "tls.rgb", pulled.stderr)

    asyncio.run(scenario())


def test_three_rtsp_clients_and_two_whep_viewers_cost_one_encode_and_no_decoded_frame(rtsp_ready, tmp_path,
                                                                                      monkeypatch, model_file):
    """Three FFmpeg clients (two over TCP, one over UDP) and two WHEP viewers (aiortc) at once on
    one camera: one RTSP subscription counted as three, one per WHEP viewer, one encode for all (no
    more encodes than decoded pictures), and the receiver's decoding loses nothing to them: no more
    than it loses without clients over as long."""

    async def scenario() -> None:
        async with _station(tmp_path, monkeypatch, model_file, fps=5.0) as station:
            # what the receiver's decoding loses without any client on this machine, over as long
            dropped_before = sum(station.session.dropped.values())
            await asyncio.sleep(PULL_SECONDS + 2)
            dropped_alone = sum(station.session.dropped.values()) - dropped_before
            dropped_before += dropped_alone
            del station.shown[:]
            decoded_before, encoded_before = station.session.frames, station.feed.frames_encoded
            clients = [asyncio.create_task(_ffmpeg(station.rtsp_url(), transport, tmp_path / f"{n}.rgb"))
                       for n, transport in enumerate(("tcp", "tcp", "udp"))]
            authorization = base64.b64encode(f"{station.viewer.name}:{station.viewer.password}".encode()).decode()
            async with aiohttp.ClientSession(headers={"Authorization": f"Basic {authorization}"}) as http:
                viewers = [await Viewer.start(http, f"{station.url}/whep/cam1") for _ in range(2)]
                watching = (0, 0)
                for _ in range(300):
                    watching = max(watching, (station.feed.clients("rtsp"), station.feed.clients("whep")))
                    if watching == (3, 2):
                        break
                    await asyncio.sleep(0.1)
                assert watching == (3, 2), "the feed counts each RTSP client and each WHEP viewer"
                assert len(station.feed._clients) == 3, "one subscription serves the RTSP clients, one each viewer"
                results = await asyncio.gather(*clients)
                whep_frames = [len(viewer.sizes) for viewer in viewers]
                for viewer in viewers:
                    await viewer.close()
            assert min(whep_frames) >= PULL_SECONDS * station.fps // 2, whep_frames
            decoded = station.session.frames - decoded_before
            encoded = station.feed.frames_encoded - encoded_before
            assert 0 < encoded <= decoded, (encoded, decoded)
            dropped_watched = sum(station.session.dropped.values()) - dropped_before
            # zero on a machine with the cores to spare; a loaded one loses as many without clients
            assert dropped_watched <= dropped_alone + max(3, decoded // 10), (dropped_watched, dropped_alone)
            for n, pulled in enumerate(results):
                assert pulled.returncode == 0, pulled.stderr
                _assert_shows_what_the_receiver_showed(station, tmp_path / f"{n}.rgb", pulled.stderr)

    asyncio.run(scenario())


@pytest.mark.parametrize("problem", ["no_python", "port_taken"])
def test_a_receiver_whose_rtsp_server_cannot_start_stops_with_the_reason(rtsp_ready, tmp_path, monkeypatch,
                                                                         model_file, problem):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    rtsp = {"enabled": True, "host": "127.0.0.1", "port": taken.getsockname()[1]}
    if problem == "no_python":
        rtsp = {**rtsp, "port": free_port(0), "python": str(tmp_path / "no-such-python")}
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    (tmp_path / "receiver.yaml").write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": free_port(0)}, "model": str(model_file), "device": "cpu",
        "cameras": [{"name": "cam1", "token_env": TOKEN_ENV}], "rtsp": rtsp,
    }))
    with pytest.raises(RtspUnavailable) as refused:
        asyncio.run(run_receiver(load_receiver_config(tmp_path / "receiver.yaml")))
    taken.close()
    assert "apt-get install python3-gi gir1.2-gst-rtsp-server-1.0" in str(refused.value)
    assert ("no-such-python" if problem == "no_python" else "cannot listen") in str(refused.value)


def test_whether_an_rtsp_server_can_run_is_known_before_starting_one(rtsp_ready, tmp_path):
    """The demo asks before it enables RTSP: a Python without PyGObject (this virtual environment's)
    cannot run one, and says why; the system Python with Debian's packages can."""
    assert unavailable_reason("/usr/bin/python3") is None
    reason = unavailable_reason(sys.executable)
    assert reason is not None and "gi" in reason, reason
    assert "no-such-python" in unavailable_reason(str(tmp_path / "no-such-python"))


def test_an_rtsp_server_that_dies_is_started_again(rtsp_ready):
    """The child killed while the receiver runs: it is logged, started again on the same port, and
    answers again (401 to a request without credentials)."""

    async def scenario() -> None:
        feeds = {"cam1": H264Feed("cam1", H264Config())}
        server = RtspServer(RtspConfig(enabled=True, host="127.0.0.1", port=free_port(0)), feeds,
                            {"viewer": hash_password("a-password-of-16-chars", log2_n=MIN_LOG2_N)})
        await server.start()
        try:
            assert await _rtsp_status(server.port, None) == 401
            first = server._child.process.pid
            os.kill(first, signal.SIGKILL)
            for _ in range(200):
                if server.restarts == 1:
                    break
                await asyncio.sleep(0.1)
            assert server.restarts == 1 and server._child.process.pid != first
            assert await _rtsp_status(server.port, None) == 401
        finally:
            await server.close()

    asyncio.run(scenario())
