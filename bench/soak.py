"""A long run of the whole system (`adaptcast bench-soak`): several cameras from looped files
through a real sender and a real receiver, with the memory of every process sampled
throughout, so that a leak, a stall or a slow drift shows as figures rather than as a station
that dies after a week.

Both daemons run as they would in production (separate processes, generated configuration
files, live mode, adaptation on) on this one machine, so they share its cores: the frame rate
is chosen to fit them (docs/reliability.md says which).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from adaptcast.demo import check_alive, free_port, spawn_daemon, wait_ready
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.data import BUNDLED_CLIP
from adaptcast.shared.device import usable_cores

SAMPLE_SECONDS = 60.0


@dataclass
class SoakSample:
    minute: float
    rss_bytes: dict[str, int]
    """Resident memory by process: sender, receiver, receiver's children (decode workers...)."""
    frames_captured: int
    frames_shown: int
    load: float
    """The machine's 1-minute load average (above its core count, the daemons were short of CPU)."""


@dataclass
class SoakResult:
    cameras: int
    size: str
    fps: float
    minutes: float
    samples: list[SoakSample] = field(default_factory=list)
    frames_captured: int = 0
    frames_shown: int = 0
    shown_within: dict[str, int] = field(default_factory=dict)
    """Frames shown within 0.3 s and within 1 s of capture."""
    segments: dict[str, int] = field(default_factory=dict)
    """Segments coded by the sender, by outcome (adapted, reused, base)."""
    fallbacks: int = 0
    reconnects: int = 0
    """Sender connections beyond each camera's first."""
    worker_restarts: int = 0
    sender_dropped: dict[str, int] = field(default_factory=dict)
    receiver_dropped: dict[str, int] = field(default_factory=dict)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a process that ended while we looked
            if parent == pid:
                found.append(int(entry))
    return sorted(found)


def _memory(sender: int, receiver: int) -> dict[str, int]:
    memory = {"sender": _rss(sender), "receiver": _rss(receiver)}
    for index, child in enumerate(_children(receiver)):
        try:
            memory[f"receiver child {index}"] = _rss(child)
        except OSError:
            pass
    return memory


def _scrape(url: str) -> dict[str, defaultdict[str, float]]:
    """Sample values summed by metric name and the label that varies (reason, outcome, le)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, defaultdict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.labels.get("reason") or sample.labels.get("outcome") or sample.labels.get("le") or ""
            sums.setdefault(sample.name, defaultdict(float))[key] += sample.value
    return sums


def run_soak(cameras: int, size: str, fps: float, minutes: float, source: Path = BUNDLED_CLIP) -> SoakResult:
    names = [f"cam{i}" for i in range(cameras)]
    env = {**os.environ, **{f"ADAPTCAST_TOKEN_{n.upper()}": secrets.token_urlsafe(16) for n in names}}
    port, metrics_port = free_port(0), free_port(0)
    receiver_url, sender_metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    result = SoakResult(cameras, size, fps, minutes)
    with tempfile.TemporaryDirectory(prefix="adaptcast-soak-") as folder:
        receiver_config, sender_config = Path(folder) / "receiver.yaml", Path(folder) / "sender.yaml"
        receiver_config.write_text(yaml.safe_dump({
            "listen": {"host": "127.0.0.1", "port": port}, "workers": max(1, min(cameras, usable_cores() // 2)),
            "threads_per_worker": 1,
            "archive": {"dir": str(Path(folder) / "archive")},
            "cameras": [{"name": n, "token_env": f"ADAPTCAST_TOKEN_{n.upper()}"} for n in names],
        }))
        sender_config.write_text(yaml.safe_dump({
            "receiver": {"url": receiver_url}, "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "cameras": [{"name": n, "source": str(source), "loop": True, "size": size, "fps": fps,
                         "mode": AdaptMode.LIVE.value, "token_env": f"ADAPTCAST_TOKEN_{n.upper()}"} for n in names],
        }))
        receiver = spawn_daemon("receiver", receiver_config, env, quiet=True)
        sender = None
        try:
            wait_ready(f"{receiver_url}/readyz", receiver)
            sender = spawn_daemon("sender", sender_config, env, quiet=True)
            wait_ready(sender_metrics.replace("/metrics", "/healthz"), sender)
            started = time.monotonic()
            while True:
                check_alive(receiver)
                check_alive(sender)
                elapsed = time.monotonic() - started
                sent, shown = _scrape(sender_metrics), _scrape(f"{receiver_url}/metrics")
                result.samples.append(SoakSample(
                    round(elapsed / 60, 1), _memory(sender.pid, receiver.pid),
                    int(sum(sent.get("adaptcast_sender_frames_captured_total", {}).values())),
                    int(sum(shown.get("adaptcast_receiver_frames_shown_total", {}).values())),
                    os.getloadavg()[0],
                ))
                print(f"soak: minute {elapsed / 60:.0f}: {result.samples[-1]}", file=sys.stderr, flush=True)
                if elapsed >= minutes * 60:
                    break
                time.sleep(min(SAMPLE_SECONDS, max(0.0, minutes * 60 - elapsed)))
            _summarise(result, sent, shown)
        finally:
            for process in (sender, receiver):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(timeout=30)
    return result


def _summarise(result: SoakResult, sent: dict[str, defaultdict[str, float]],
               shown: dict[str, defaultdict[str, float]]) -> None:
    def total(metrics: dict[str, defaultdict[str, float]], name: str) -> int:
        return int(sum(metrics.get(name, {}).values()))

    result.frames_captured = result.samples[-1].frames_captured
    result.frames_shown = result.samples[-1].frames_shown
    buckets = shown.get("adaptcast_receiver_latency_seconds_bucket", defaultdict(float))
    result.shown_within = {"0.3 s": int(buckets["0.3"]), "1 s": int(buckets["1.0"])}
    result.segments = {k: int(v) for k, v in sent.get("adaptcast_sender_segments_encoded_total", {}).items()}
    result.fallbacks = total(shown, "adaptcast_receiver_fallback_segments_total")
    result.reconnects = total(sent, "adaptcast_sender_connections_total") - result.cameras
    result.worker_restarts = total(shown, "adaptcast_receiver_decode_worker_restarts_total")
    result.sender_dropped = {k: int(v) for k, v in sent.get("adaptcast_sender_frames_dropped_total", {}).items()}
    result.receiver_dropped = {
        k: int(v)
        for name in ("adaptcast_receiver_records_dropped_total", "adaptcast_receiver_malformed_messages_total")
        for k, v in shown.get(name, {}).items()
    }


def markdown(result: SoakResult) -> str:
    first, last = result.samples[0], result.samples[-1]
    warm = next((s for s in result.samples if s.minute >= 10), first)
    lines = [
        f"{result.cameras} cameras, {result.size}, {result.fps:g} fps, live mode with adaptation, "
        f"{last.minute:g} minutes.",
        "",
        "| figure | value |", "|---|---|",
        f"| frames captured (sender) | {result.frames_captured} |",
        f"| frames shown (receiver) | {result.frames_shown} "
        f"({result.frames_shown / max(1, result.frames_captured):.1%}) |",
        f"| shown within 0.3 s / 1 s of capture | {result.shown_within['0.3 s']} / {result.shown_within['1 s']} |",
        f"| segments by outcome (sender) | {result.segments} |",
        f"| fallback segments (receiver) | {result.fallbacks} |",
        f"| reconnects | {result.reconnects} |",
        f"| decode worker restarts | {result.worker_restarts} |",
        f"| dropped at the sender | {result.sender_dropped or 'none'} |",
        f"| dropped or refused at the receiver | {result.receiver_dropped or 'none'} |",
        f"| load average (1 min), median of the samples "
        f"| {sorted(s.load for s in result.samples)[len(result.samples) // 2]:.1f} |",
        "",
        "Resident memory (MiB) at the first sample, after 10 minutes and at the end:",
        "",
        "| process | start | 10 min | end | end - 10 min |", "|---|---|---|---|---|",
    ]
    for name in last.rss_bytes:
        values = [s.rss_bytes.get(name, 0) / 2**20 for s in (first, warm, last)]
        lines.append(f"| {name} | {values[0]:.0f} | {values[1]:.0f} | {values[2]:.0f} | {values[2] - values[1]:+.0f} |")
    return "\n".join(lines)
