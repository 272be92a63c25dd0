"""Re-publication measured (`adaptcast bench-republish`): what encoding each camera's decoded
video as H.264 costs, and what RTSP and WHEP clients see.

Encode cost: the receiver's own H264Feed encodes the bundled clip at each size, one frame at a
time at the camera's rate as the decoder would hand them over, for one subscribed client; the
process's CPU time over the video's duration is the share of one core that re-publishing a
camera takes (whatever its number of clients: the encoding is shared).

Clients: a real receiver and sender (adaptcast.demo.LoopbackStation) stream the bundled clip with
its capture time burned into the picture (shared/timecode.py); N RTSP clients (FFmpeg's
command-line player pulling over TCP, decoding to raw frames on a pipe) and N WHEP clients
(aiortc peers, which decode H.264 with FFmpeg too) watch the camera at once. Glass-to-glass
latency is the moment a client's decoder hands a frame over minus the capture time read from
that frame (one machine, one clock). Frames received per client are set against the frames the
receiver decoded meanwhile; the CPU of the receiver's main process (encoding, WHEP) and of its
RTSP server process is sampled over the same time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adaptcast.demo import BUNDLED_CLIP, CAMERA, LoopbackStation, StationSettings
from adaptcast.receiver.h264feed import H264Feed
from adaptcast.shared import timecode
from adaptcast.shared.config import H264Config
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.video import read_frames

WARM_UP_SECONDS = 3.0
"""Each client's first seconds are not measured: the keyframe it waits for, its decoder's start."""


@dataclass
class EncodeCost:
    size: str
    fps: float
    preset: str
    bitrate_kbps: int
    frames: int
    encode_ms_p50: float
    encode_ms_p95: float
    core_share: float
    """CPU seconds spent per second of video: the share of one core a camera's re-publication takes."""
    kbit_per_second: float


@dataclass
class ClientFigures:
    clients_per_protocol: int
    protocol: str
    size: str
    fps: float
    seconds: float
    receiver_frames: int
    """Frames the receiver decoded during the measured time."""
    frames_per_client_min: int
    frames_per_client_median: float
    latency_p50_seconds: float | None
    latency_p95_seconds: float | None
    receiver_decode_latency_p50_seconds: float | None
    """The receiver's own glass-to-glass median (capture to decoded), for comparison."""
    receiver_main_core_share: float
    """CPU of the receiver's main process (WHIP, H.264 encoding, WHEP) over the time, in cores."""
    rtsp_server_core_share: float
    unreadable_frames: int = 0
    """Frames a client showed whose timecode did not read (damaged on the way)."""


def measure_encode_cost(size: FrameSize, fps: float, config: H264Config, seconds: float) -> EncodeCost:
    """Encode `seconds` of the bundled clip (looped) at `size` and `fps` through an H264Feed."""
    clip = list(read_frames(BUNDLED_CLIP, size, fps=fps))
    count = max(1, round(seconds * fps))
    frames = [clip[i % len(clip)] for i in range(count)]

    async def encode_all() -> tuple[list[float], int, float]:
        feed = H264Feed("bench", config)
        client = feed.subscribe("rtsp")
        times, size_bytes = [], 0
        cpu_before = _process_cpu_seconds()
        for frame in frames:
            feed.publish(frame, 0, fps)
            started = time.perf_counter()
            encoded = await client.next_frame()
            times.append(time.perf_counter() - started)
            size_bytes += len(encoded.data) if encoded else 0
        cpu = _process_cpu_seconds() - cpu_before
        await feed.close()
        return times, size_bytes, cpu

    times, size_bytes, cpu = asyncio.run(encode_all())
    result = EncodeCost(size=str(size), fps=fps, preset=config.preset, bitrate_kbps=config.bitrate_kbps,
                        frames=count, encode_ms_p50=statistics.median(times) * 1000,
                        encode_ms_p95=float(np.percentile(times, 95)) * 1000, core_share=cpu / (count / fps),
                        kbit_per_second=size_bytes * 8 / 1000 / (count / fps))
    print(f"encode {size} at {fps:g} fps: {result.encode_ms_p50:.1f} ms a frame, {result.core_share:.1%} of a core",
          file=sys.stderr)
    return result


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class _ClientLog:
    """What one client saw: the latency of each frame whose timecode read."""

    latencies: list[float] = field(default_factory=list)
    stamps: set[int] = field(default_factory=set)
    """The distinct capture times seen (a picture shown twice counts once)."""
    unreadable: int = 0
    measuring_from: float = float("inf")
    """Frames shown before this time.time() are not counted (nothing is until the window is set)."""
    measuring_until: float = float("inf")

    def shown(self, rgb: np.ndarray, at: float) -> None:
        if not self.measuring_from <= at < self.measuring_until:
            return
        stamped = timecode.read(rgb)
        if stamped is None:
            self.unreadable += 1
        elif stamped not in self.stamps:  # the first showing of a picture is its latency
            self.stamps.add(stamped)
            self.latencies.append(timecode.age_seconds(stamped, at))


def _rtsp_client(url: str, size: FrameSize, log: _ClientLog, stop: threading.Event) -> subprocess.Popen:
    """FFmpeg pulling `url` over TCP with its low-delay flags, its frames read on a thread."""
    process = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp", "-fflags", "nobuffer",
         "-flags", "low_delay", "-probesize", "32", "-analyzeduration", "0", "-i", url,
         "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    frame_bytes = size.width * size.height * 3

    def read() -> None:
        assert process.stdout is not None
        while not stop.is_set():
            data = process.stdout.read(frame_bytes)
            if len(data) < frame_bytes:
                return
            log.shown(np.frombuffer(data, np.uint8).reshape(size.height, size.width, 3), time.time())

    threading.Thread(target=read, daemon=True).start()
    return process


async def _whep_client(url: str, authorization: str, log: _ClientLog, stop: asyncio.Event) -> None:
    """An aiortc peer playing the camera over WHEP until `stop`."""
    import aiohttp
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    track_ready: asyncio.Future = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def track_arrived(track: MediaStreamTrack) -> None:
        if not track_ready.done():
            track_ready.set_result(track)

    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Authorization": authorization, "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
            if response.status != 201:
                raise RuntimeError(f"WHEP offer refused: {response.status} {await response.text()}")
            location = response.headers["Location"]
            answer = await response.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        try:
            track = await asyncio.wait_for(track_ready, 10)
            while not stop.is_set():
                try:
                    frame = await asyncio.wait_for(track.recv(), 1.0)
                except asyncio.TimeoutError:
                    continue
                log.shown(frame.to_ndarray(format="rgb24"), time.time())
        finally:
            await http.delete(url.split("/whep/")[0] + location, headers={"Authorization": authorization})
            await pc.close()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rtsp_server_pid(receiver_pid: int) -> int | None:
    children = Path(f"/proc/{receiver_pid}/task/{receiver_pid}/children").read_text().split()
    for child in children:
        try:
            if b"rtsp" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
        except OSError:
            continue
    return None


def _camera(station: LoopbackStation) -> dict:
    return json.loads(station.viewer.get(f"{station.url}/api/cameras"))[0]


def measure_clients(counts: list[int], size: FrameSize, fps: float, seconds: float) -> list[ClientFigures]:
    """For each count N: N RTSP and N WHEP clients on one camera at once, for `seconds`."""
    settings = StationSettings(size=str(size), fps=fps, port=0, timecode=True, rtsp_port=0)
    results = []
    with LoopbackStation(settings, quiet=True) as station:
        deadline = time.monotonic() + 120
        while _camera(station)["frames"] < 10:
            station.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("no frames reached the receiver in 120 s")
            time.sleep(0.2)
        for count in counts:
            results += _measure_count(station, count, size, fps, seconds)
    return results


def _measure_count(station: LoopbackStation, count: int, size: FrameSize, fps: float,
                   seconds: float) -> list[ClientFigures]:
    assert station.receiver is not None, "a started station has its receiver"
    receiver_pid = station.receiver.pid
    viewer = station.viewer
    rtsp_url = f"rtsp://{viewer.name}:{viewer.password}@127.0.0.1:{station.rtsp_port}/{CAMERA}"
    authorization = "Basic " + base64.b64encode(f"{viewer.name}:{viewer.password}".encode()).decode()
    logs = {"rtsp": [_ClientLog() for _ in range(count)], "whep": [_ClientLog() for _ in range(count)]}
    stop_threads = threading.Event()
    players = [_rtsp_client(rtsp_url, size, log, stop_threads) for log in logs["rtsp"]]
    measured: dict[str, float] = {}

    async def watch() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_whep_client(f"{station.url}/whep/{CAMERA}", authorization, log, stop))
                   for log in logs["whep"]]
        await asyncio.sleep(WARM_UP_SECONDS)
        start = time.time()
        for log in logs["rtsp"] + logs["whep"]:
            log.measuring_from = start
        rtsp_pid = _rtsp_server_pid(receiver_pid)
        cpu_main, cpu_rtsp = _cpu_seconds(receiver_pid), _cpu_seconds(rtsp_pid) if rtsp_pid else 0.0
        frames = _camera(station)["frames"]
        await asyncio.sleep(seconds)
        end = time.time()
        for log in logs["rtsp"] + logs["whep"]:
            log.measuring_until = end
        measured.update(
            frames=_camera(station)["frames"] - frames, elapsed=end - start,
            main=_cpu_seconds(receiver_pid) - cpu_main,
            rtsp=(_cpu_seconds(rtsp_pid) - cpu_rtsp) if rtsp_pid else 0.0,
            decode_latency=_camera(station)["latency_p50_seconds"] or float("nan"),
        )
        stop.set()
        await asyncio.gather(*clients)

    try:
        asyncio.run(watch())
    finally:
        stop_threads.set()
        for player in players:  # killed: FFmpeg blocked on a pipe no one reads does not act on SIGTERM
            player.kill()
            player.wait()
            assert player.stdout is not None, "_rtsp_client asks for its output as a pipe"
            player.stdout.close()
    results = []
    for protocol, client_logs in logs.items():
        latencies = [latency for log in client_logs for latency in log.latencies]
        received = [len(log.latencies) + log.unreadable for log in client_logs]
        result = ClientFigures(
            clients_per_protocol=count, protocol=protocol, size=str(size), fps=fps, seconds=measured["elapsed"],
            receiver_frames=int(measured["frames"]), frames_per_client_min=min(received),
            frames_per_client_median=statistics.median(received),
            latency_p50_seconds=float(np.percentile(latencies, 50)) if latencies else None,
            latency_p95_seconds=float(np.percentile(latencies, 95)) if latencies else None,
            receiver_decode_latency_p50_seconds=measured["decode_latency"],
            receiver_main_core_share=measured["main"] / measured["elapsed"],
            rtsp_server_core_share=measured["rtsp"] / measured["elapsed"],
            unreadable_frames=sum(log.unreadable for log in client_logs),
        )
        print(f"{count} x {protocol}: {result.frames_per_client_median:g} of {result.receiver_frames} frames a "
              f"client, latency p50 {result.latency_p50_seconds} s", file=sys.stderr)
        results.append(result)
    return results


def markdown(costs: list[EncodeCost], clients: list[ClientFigures]) -> str:
    def ms(value: float | None) -> str:
        return f"{value * 1000:.0f} ms" if value is not None and value == value else "-"

    lines = ["## Encoding cost per camera", "",
             "| size | fps | preset | bitrate | frames | encode p50 | encode p95 | CPU (share of one core) "
             "| kbit/s out |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c.size} | {c.fps:g} | {c.preset} | {c.bitrate_kbps} kbit/s | {c.frames} | {c.encode_ms_p50:.1f} ms "
              f"| {c.encode_ms_p95:.1f} ms | {c.core_share:.1%} | {c.kbit_per_second:.0f} |" for c in costs]
    lines += ["", "## Clients of one camera: glass-to-glass latency and frames received", "",
              "| clients per protocol | protocol | size | seconds | frames decoded by the receiver | frames per "
              "client (min / median) | latency p50 | latency p95 | receiver's own latency p50 | receiver main "
              "process CPU | RTSP server CPU | unreadable timecodes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.clients_per_protocol} | {r.protocol} | {r.size} | {r.seconds:.0f} | {r.receiver_frames} | "
              f"{r.frames_per_client_min} / {r.frames_per_client_median:g} | {ms(r.latency_p50_seconds)} | "
              f"{ms(r.latency_p95_seconds)} | {ms(r.receiver_decode_latency_p50_seconds)} | "
              f"{r.receiver_main_core_share:.0%} | {r.rtsp_server_core_share:.0%} | {r.unreadable_frames} |"
              for r in clients]
    return "\n".join(lines)
