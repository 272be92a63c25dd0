"""The streaming path measured end to end (`adaptcast bench-stream`): a real receiver and a real
sender on loopback, one camera, in live and segment mode.

Glass-to-glass latency is the receiver's clock when a frame is decoded minus the capture time
the sender stamped on it (one machine, one clock); the receiver keeps it for its last 600
frames, so a run of up to a minute at 10 fps is measured whole. Bytes on the wire (every
data-channel message, framing included) are set against the records' own bytes. The share of
frames shown within a second counts, from the receiver's latency histogram, the frames shown at
most 1 s after capture against the frames the camera produced in the measured time (fps x
seconds), so a frame lost anywhere counts as late.

With `cpu_hogs`, that many processes spin on the CPU beside the daemons for the whole run (a
busy edge box): the sender must shed work rather than fall behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from adaptcast.demo import LoopbackStation, StationSettings
from adaptcast.shared.adapters.mode import AdaptMode

WARM_UP_FRAMES = 10


@dataclass
class StreamBenchResult:
    mode: AdaptMode
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
    cpu_hogs: int = 0
    """Processes spinning on the CPU beside the daemons."""
    shown_within_1s: float | None = None
    """Frames shown at most 1 s after capture / frames the camera produced (fps x seconds)."""
    fit_realtime_factor: float | None = None
    """The sender's last fit: seconds over a segment's."""
    load_level: float | None = None
    """The sender's load level at the end (sender/shedding.py)."""
    frames_coded: dict[str, float] | None = None
    """Frames coded by kind during the measured time (intra, predicted, skip)."""
    refine_steps: float | None = None
    """Latent-refinement steps the sender ran during the measured time."""


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


def _gauge(metrics_text: str, name: str) -> float | None:
    values = [sample.value for family in text_string_to_metric_families(metrics_text)
              for sample in family.samples if sample.name == name]
    return values[0] if values else None


def _within_one_second(metrics_text: str) -> float:
    """Frames shown at most 1 s after capture, from the receiver's latency histogram."""
    return sum(sample.value for family in text_string_to_metric_families(metrics_text) for sample in family.samples
               if sample.name == "adaptcast_receiver_latency_seconds_bucket" and sample.labels.get("le") == "1.0")


@contextmanager
def cpu_hogs(count: int):
    """`count` processes that keep a core each busy until the block ends."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def measure_stream(mode: AdaptMode, size: str, fps: float, segment_seconds: float, seconds: float,
                   hogs: int = 0) -> StreamBenchResult:
    settings = StationSettings(size=size, fps=fps, mode=mode, segment_seconds=segment_seconds, port=0)
    with cpu_hogs(hogs), LoopbackStation(settings, quiet=True) as station:
        cameras_url = f"{station.url}/api/cameras"
        deadline = time.monotonic() + 120
        while json.loads(station.viewer.get(cameras_url))[0]["frames"] < WARM_UP_FRAMES:
            station.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("no frames reached the receiver in 120 s")
            time.sleep(0.2)
        sender_start = _get(station.sender_metrics_url)
        wire_start = _sums(sender_start, "adaptcast_sender_sent_bytes_total")
        records_start = _sums(sender_start, "adaptcast_sender_payload_bytes_total")
        kinds_start = _sums(sender_start, "adaptcast_sender_frames_coded_total")
        refine_start = _gauge(sender_start, "adaptcast_sender_refine_steps_total") or 0.0
        on_time_start = _within_one_second(_get(f"{station.url}/metrics"))
        frames_start = json.loads(station.viewer.get(cameras_url))[0]["frames"]
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            station.check_alive()
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        camera = json.loads(station.viewer.get(cameras_url))[0]
        sender_text = _get(station.sender_metrics_url)
        on_time = _within_one_second(_get(f"{station.url}/metrics")) - on_time_start
    kinds = _sums(sender_text, "adaptcast_sender_frames_coded_total")
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
        dropped=_sums(sender_text, "adaptcast_sender_frames_dropped_total"), cpu_hogs=hogs,
        shown_within_1s=on_time / (fps * elapsed),
        fit_realtime_factor=_gauge(sender_text, "adaptcast_sender_fit_realtime_factor"),
        load_level=_gauge(sender_text, "adaptcast_sender_load_level"),
        frames_coded={kind: n - kinds_start.get(kind, 0.0) for kind, n in kinds.items()},
        refine_steps=(_gauge(sender_text, "adaptcast_sender_refine_steps_total") or 0.0) - refine_start,
    )
    print(f"{mode}, {hogs} CPU hogs: {result.frames} frames in {elapsed:.0f} s, latency p50 "
          f"{result.latency_p50_seconds} s, p95 {result.latency_p95_seconds} s, "
          f"{result.shown_within_1s:.0%} shown within 1 s", file=sys.stderr)
    return result


def markdown_table(results: list[StreamBenchResult]) -> str:
    def ms(value: float | None) -> str:
        return f"{value * 1000:.0f} ms" if value is not None else "-"

    def optional(value: float | None, form: str) -> str:
        return format(value, form) if value is not None else "-"

    lines = ["| mode | CPU hogs | size | fps | segment | seconds | frames decoded | shown within 1 s | latency p50 "
             "| latency p95 | fit real-time factor | load level at the end | frames coded (kind) | refinement steps "
             "| wire kbit/s | records kbit/s | framing overhead | adapter share | dropped at the sender |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.mode} | {r.cpu_hogs} | {r.size} | {r.fps:g} | {r.segment_seconds:g} s | {r.seconds:.0f} | "
              f"{r.frames} | {optional(r.shown_within_1s, '.0%')} | {ms(r.latency_p50_seconds)} | "
              f"{ms(r.latency_p95_seconds)} | {optional(r.fit_realtime_factor, '.2f')} | "
              f"{optional(r.load_level, '.0f')} | "
              f"{', '.join(f'{k} {v:.0f}' for k, v in sorted((r.frames_coded or {}).items())) or '-'} | "
              f"{optional(r.refine_steps, '.0f')} | "
              f"{r.wire_bytes_per_second * 8 / 1e3:.1f} | "
              f"{r.record_bytes_per_second * 8 / 1e3:.1f} | {r.framing_overhead:.1%} | {r.adapter_share:.1%} | "
              f"{dict(r.dropped) or 'none'} |" for r in results]
    return "\n".join(lines)
