"""The streaming path measured end to end (`adaptcast bench-stream`): a real receiver and a real
sender on loopback, one camera, in live and segment mode.

Glass-to-glass latency is the receiver's clock when a frame is decoded minus the capture time
the sender stamped on it (one machine, one clock); the receiver keeps it for its last 600
frames, so a run of up to a minute at 10 fps is measured whole. Bytes on the wire (every
data-channel message, framing included) are set against the records' own bytes.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from shared.demo import LoopbackStation, StationSettings

WARM_UP_FRAMES = 10


@dataclass
class StreamBenchResult:
    mode: str
    size: str
    fps: float
    segment_seconds: float
    seconds: float
    frames: int
    latency_p50_seconds: float | None
    latency_p95_seconds: float | None
    wire_bytes_per_second: float
    """Everything handed to the data channel, framing, heartbeats and adapters included."""
    record_bytes_per_second: float
    """The records themselves: latents, adapter updates, headers."""
    framing_overhead: float
    """wire / records - 1."""
    adapter_share: float
    """Adapter bytes / all record bytes."""
    dropped: dict[str, float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _sums(metrics_text: str, name: str) -> dict[str, float]:
    """Sample values of counter `name` by its `kind` or `reason` label."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get("kind") or sample.labels.get("reason") or ""
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def measure_stream(mode: str, size: str, fps: float, segment_seconds: float, seconds: float) -> StreamBenchResult:
    settings = StationSettings(size=size, fps=fps, mode=mode, segment_seconds=segment_seconds, port=0)
    with LoopbackStation(settings, quiet=True) as station:
        cameras_url = f"{station.url}/api/cameras"
        deadline = time.monotonic() + 120
        while json.loads(_get(cameras_url))[0]["frames"] < WARM_UP_FRAMES:
            station.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("no frames reached the receiver in 120 s")
            time.sleep(0.2)
        wire_start = _sums(_get(station.sender_metrics_url), "adaptcast_sender_sent_bytes_total")
        records_start = _sums(_get(station.sender_metrics_url), "adaptcast_sender_payload_bytes_total")
        frames_start = json.loads(_get(cameras_url))[0]["frames"]
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            station.check_alive()
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        camera = json.loads(_get(cameras_url))[0]
        sender_text = _get(station.sender_metrics_url)
    wire = _sums(sender_text, "adaptcast_sender_sent_bytes_total")
    records = _sums(sender_text, "adaptcast_sender_payload_bytes_total")
    wire_bytes = sum(wire.values()) - sum(wire_start.values())
    record_bytes = sum(records.values()) - sum(records_start.values())
    adapter_bytes = records.get("adapter", 0.0) - records_start.get("adapter", 0.0)
    result = StreamBenchResult(
        mode=mode, size=size, fps=fps, segment_seconds=segment_seconds, seconds=elapsed,
        frames=camera["frames"] - frames_start,
        latency_p50_seconds=camera["latency_p50_seconds"], latency_p95_seconds=camera["latency_p95_seconds"],
        wire_bytes_per_second=wire_bytes / elapsed, record_bytes_per_second=record_bytes / elapsed,
        framing_overhead=wire_bytes / record_bytes - 1 if record_bytes else 0.0,
        adapter_share=adapter_bytes / record_bytes if record_bytes else 0.0,
        dropped=_sums(sender_text, "adaptcast_sender_frames_dropped_total"),
    )
    print(f"{mode}: {result.frames} frames in {elapsed:.0f} s, latency p50 {result.latency_p50_seconds} s, "
          f"p95 {result.latency_p95_seconds} s", file=sys.stderr)
    return result


def markdown_table(results: list[StreamBenchResult]) -> str:
    def ms(value: float | None) -> str:
        return f"{value * 1000:.0f} ms" if value is not None else "-"

    lines = ["| mode | size | fps | segment | seconds | frames decoded | latency p50 | latency p95 | wire kbit/s "
             "| records kbit/s | framing overhead | adapter share | dropped at the sender |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.mode} | {r.size} | {r.fps:g} | {r.segment_seconds:g} s | {r.seconds:.0f} | {r.frames} | "
              f"{ms(r.latency_p50_seconds)} | {ms(r.latency_p95_seconds)} | {r.wire_bytes_per_second * 8 / 1e3:.1f} | "
              f"{r.record_bytes_per_second * 8 / 1e3:.1f} | {r.framing_overhead:.1%} | {r.adapter_share:.1%} | "
              f"{dict(r.dropped) or 'none'} |" for r in results]
    return "\n".join(lines)
