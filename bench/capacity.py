"""Streams per receiver (`adaptcast bench-capacity`): how many cameras one receiver decodes on time.

The senders' work is kept out of the measurement (on a real site it runs on the edge boxes):
the clip is coded once, ahead, in live mode with its adapters, and replayed as N cameras at the
camera's rate through the real transport (WHIP, one aiortc connection per camera, the sender's
StreamSender) to a real receiver process. Each frame is stamped when it is handed to the
transport, so latency here is transport, queueing and decoding, without the sender's encoding.
Cameras start spread over one frame interval, as free-running cameras would.

A frame is on time when the receiver shows it within ON_TIME_SECONDS of its stamp (the live
mode's latency target). A stream count passes when every camera had every frame decoded and
at least PASS_ON_TIME of them on time.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from adaptcast.demo import ViewerLogin, free_port, spawn_daemon, wait_ready
from adaptcast.receiver.session import ON_TIME_SECONDS
from adaptcast.sender.encoder import Outgoing
from adaptcast.sender.transport import StreamSender, WhipConnection
from adaptcast.shared.adapters.fitting import FitBudget
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.adapters.update import decode_update, encode_update
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    FrameRecord,
    Record,
    SegmentStart,
    StreamHeader,
    read_records,
)
from adaptcast.shared.codec.defaults import DEFAULT_MODEL
from adaptcast.shared.codec.modelfile import load_model
from adaptcast.shared.device import pick_device
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import AdaptOptions, encode_file
from adaptcast.shared.video import VideoWriter, read_frames

PASS_ON_TIME = 0.99
SETTLE_SECONDS = 10.0
"""After the last frame is sent, time the receiver gets to show what it still holds."""


@dataclass
class CapacityPoint:
    streams: int
    workers: int
    seconds: float
    frames_sent: int
    frames_shown: int
    on_time: float
    """Share of the frames sent that were shown within ON_TIME_SECONDS (the worst camera's)."""
    latency_p50_seconds: float | None
    """The worst camera's median, over its last 600 frames."""
    latency_p95_seconds: float | None
    wire_bytes_per_second: float
    """Per stream: everything handed to the data channel, framing and heartbeats included."""
    record_bytes_per_second: float
    """Per stream: the records themselves (latents, adapters, headers)."""
    keyframe_requests: int
    adapter_swaps: int
    """Segments that switched adapters at the receiver, all cameras: adaptation was on."""
    fallbacks: int
    dropped: dict[str, int]
    """Records the senders or the receiver did not deliver, by reason."""
    passed: bool


def record_clip(clip: Path, size: FrameSize, fps: float, seconds: float, steps: int, folder: Path) -> list[Record]:
    """The clip looped to `seconds`, coded as a live-mode sender would (2 s segments)."""
    frames = list(read_frames(clip, size, fps))
    looped = folder / "looped.mp4"
    with VideoWriter(looped, fps, size) as writer:
        for index in range(round(seconds * fps)):
            writer.write(frames[index % len(frames)])
    coded = folder / "camera.acs"
    encode_file(looped, coded, load_model(DEFAULT_MODEL), pick_device("auto"), size=size, fps=fps,
                segment_frames=round(2 * fps), adapt=AdaptOptions(mode=AdaptMode.LIVE, budget=FitBudget(steps=steps)),
                progress=False)
    with open(coded, "rb") as file:
        return list(read_records(file))


@dataclass
class _Replay:
    frames: int = 0
    keyframe_requests: int = 0
    sent_bytes: int = 0
    payload_bytes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


async def _replay(camera: str, records: list[Record], endpoint: str, token: str, fps: float,
                  offset: float) -> _Replay:
    """Send one camera's copy of the recording at the camera's pace, stamping frames as they go."""
    connection = WhipConnection(endpoint, token, timeout=30)
    await connection.open()
    result = _Replay()

    def keyframe_requested(reason: str) -> None:
        result.keyframe_requests += 1

    sender = StreamSender(camera, connection, live=True, on_keyframe_request=keyframe_requested)
    running = asyncio.create_task(sender.run())
    loop = asyncio.get_running_loop()
    start = loop.time() + offset
    segment: int | None = None
    try:
        for record in records:
            if isinstance(record, StreamHeader):
                record = replace(record, stream=camera)
            elif isinstance(record, AdapterRecord):  # an update names the stream it was fitted for
                record = AdapterRecord(encode_update(replace(decode_update(record.update), stream=camera)))
            if isinstance(record, SegmentStart):
                segment = record.index
            if not isinstance(record, FrameRecord):
                sender.put([Outgoing(record, segment=segment)])
                continue
            await asyncio.sleep(max(0.0, start + result.frames / fps - loop.time()))
            now = time.time()
            sender.put([Outgoing(replace(record, captured_us=int(now * 1e6)), segment, record.index, now)])
            result.frames += 1
        await sender.drained(SETTLE_SECONDS)
        if running.done():
            running.result()  # a lost connection fails the measurement
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await connection.close()
    result.sent_bytes = sum(sender.sent_bytes.values())
    result.payload_bytes = sum(sender.payload_bytes.values())
    result.dropped = sender.dropped
    return result


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@dataclass
class _ReceiverFigures:
    shown: Counter[str]
    """Frames shown, by camera."""
    on_time: Counter[str]
    """Frames shown within ON_TIME_SECONDS, by camera."""
    dropped: Counter[str]
    swaps: int
    fallbacks: int


def _receiver_figures(metrics_text: str) -> _ReceiverFigures:
    figures = _ReceiverFigures(Counter(), Counter(), Counter(), 0, 0)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            camera = sample.labels.get("camera", "")
            if sample.name == "adaptcast_receiver_frames_shown_total":
                figures.shown[camera] = int(sample.value)
            elif sample.name == "adaptcast_receiver_latency_seconds_bucket" and \
                    float(sample.labels["le"]) == ON_TIME_SECONDS:
                figures.on_time[camera] = int(sample.value)
            elif sample.name in ("adaptcast_receiver_records_dropped_total",
                                 "adaptcast_receiver_malformed_messages_total"):
                figures.dropped[f"receiver {sample.labels['reason']}"] += int(sample.value)
            elif sample.name == "adaptcast_receiver_adapter_swaps_total":
                figures.swaps += int(sample.value)
            elif sample.name == "adaptcast_receiver_fallback_segments_total":
                figures.fallbacks += int(sample.value)
    return figures


def measure_capacity(records: list[Record], streams: int, workers: int, fps: float) -> CapacityPoint:
    """Replay the recording as `streams` cameras to a fresh receiver with `workers` decode workers."""
    cameras = [f"cam{i}" for i in range(streams)]
    tokens = {camera: secrets.token_urlsafe(16) for camera in cameras}
    env = {**os.environ, **{f"ADAPTCAST_TOKEN_{camera.upper()}": token for camera, token in tokens.items()}}
    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    viewer = ViewerLogin.random()
    with tempfile.TemporaryDirectory(prefix="adaptcast-capacity-") as folder:
        config = Path(folder) / "receiver.yaml"
        config.write_text(yaml.safe_dump({
            "listen": {"host": "127.0.0.1", "port": port}, "workers": workers,
            "cameras": [{"name": c, "token_env": f"ADAPTCAST_TOKEN_{c.upper()}"} for c in cameras],
            "viewers": [viewer.config()],
        }))
        receiver = spawn_daemon("receiver", config, env, quiet=True)
        try:
            wait_ready(f"{url}/readyz", receiver)
            started = time.monotonic()
            replays = asyncio.run(_replay_all(records, cameras, tokens, url, fps))
            seconds = time.monotonic() - started
            sent = min(r.frames for r in replays)
            deadline = time.monotonic() + SETTLE_SECONDS
            while True:
                figures = _receiver_figures(_get(f"{url}/metrics"))
                if all(figures.shown[c] >= sent for c in cameras) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            status = json.loads(viewer.get(f"{url}/api/cameras"))
        finally:
            receiver.terminate()
            receiver.wait(timeout=30)
    dropped = figures.dropped
    for replay in replays:
        dropped.update({f"sender {reason}": n for reason, n in replay.dropped.items()})
    worst_on_time = min(figures.on_time[c] / max(1, r.frames) for c, r in zip(cameras, replays))
    p50 = [c["latency_p50_seconds"] for c in status if c["latency_p50_seconds"] is not None]
    p95 = [c["latency_p95_seconds"] for c in status if c["latency_p95_seconds"] is not None]
    all_shown = all(figures.shown[c] >= r.frames for c, r in zip(cameras, replays))
    point = CapacityPoint(
        streams=streams, workers=workers, seconds=seconds, frames_sent=sum(r.frames for r in replays),
        frames_shown=sum(figures.shown.values()), on_time=worst_on_time,
        latency_p50_seconds=max(p50, default=None), latency_p95_seconds=max(p95, default=None),
        wire_bytes_per_second=sum(r.sent_bytes for r in replays) / streams / seconds,
        record_bytes_per_second=sum(r.payload_bytes for r in replays) / streams / seconds,
        keyframe_requests=sum(r.keyframe_requests for r in replays), adapter_swaps=figures.swaps,
        fallbacks=figures.fallbacks, dropped=dict(dropped),
        passed=all_shown and worst_on_time >= PASS_ON_TIME,
    )
    print(f"{streams} streams: {point.frames_shown}/{point.frames_sent} frames shown, worst camera "
          f"{point.on_time:.1%} on time, p95 {point.latency_p95_seconds}", file=sys.stderr)
    return point


async def _replay_all(records: list[Record], cameras: list[str], tokens: dict[str, str], url: str,
                      fps: float) -> list[_Replay]:
    return await asyncio.gather(*(
        _replay(camera, records, f"{url}/whip/{camera}", tokens[camera], fps, index / (fps * len(cameras)))
        for index, camera in enumerate(cameras)
    ))


def markdown_table(points: list[CapacityPoint]) -> str:
    def ms(value: float | None) -> str:
        return f"{value * 1000:.0f} ms" if value is not None else "-"

    lines = [f"| streams | decode workers | frames shown / sent | on time (≤ {ON_TIME_SECONDS * 1000:.0f} ms, "
             "worst camera) | latency p50 | latency p95 | wire kbit/s per stream | records kbit/s per stream "
             "| framing overhead | adapter swaps | fallbacks | keyframe requests | dropped | every frame on time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        overhead = p.wire_bytes_per_second / p.record_bytes_per_second - 1 if p.record_bytes_per_second else 0.0
        lines.append(
            f"| {p.streams} | {p.workers} | {p.frames_shown} / {p.frames_sent} | {p.on_time:.1%} | "
            f"{ms(p.latency_p50_seconds)} | {ms(p.latency_p95_seconds)} | {p.wire_bytes_per_second * 8 / 1e3:.1f} | "
            f"{p.record_bytes_per_second * 8 / 1e3:.1f} | {overhead:.1%} | {p.adapter_swaps} | {p.fallbacks} | "
            f"{p.keyframe_requests} | "
            f"{p.dropped or 'none'} | {'yes' if p.passed else 'no'} |")
    return "\n".join(lines)
