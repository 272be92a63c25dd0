"""The receiver's metrics, read from its camera sessions at scrape time."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from receiver.server import WhipServer
from receiver.session import LATENCY_BUCKETS_SECONDS, CameraSession
from receiver.workers import DecodePool
from shared.metrics import by_reason, counter, gauge


class ReceiverCollector(Collector):
    def __init__(self, sessions: dict[str, CameraSession], whip: WhipServer, pool: DecodePool) -> None:
        self.sessions = sessions
        self.whip = whip
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        sessions = sorted(self.sessions.items())
        yield counter("adaptcast_receiver_frames_decoded", "Frames decoded and shown.", ["camera"],
                      [([name, ], float(s.frames)) for name, s in sessions])
        yield counter("adaptcast_receiver_received_bytes", "Bytes received on the data channel, framing included.",
                      ["camera"], [([name], float(s.received_bytes)) for name, s in sessions])
        yield counter("adaptcast_receiver_dropped", "Messages or records dropped, by reason.", ["camera", "reason"],
                      [sample for name, s in sessions for sample in by_reason(name, s.drops())])
        yield counter("adaptcast_receiver_fallback_segments",
                      "Segments decoded with the base model although they named an adapter, by reason.",
                      ["camera", "reason"],
                      [sample for name, s in sessions for sample in by_reason(name, s.adapter_events("fallback"))])
        yield counter("adaptcast_receiver_adapter_rejections", "Adapter updates refused, by reason.",
                      ["camera", "reason"],
                      [sample for name, s in sessions for sample in by_reason(name, s.adapter_events("rejected"))])
        yield gauge("adaptcast_receiver_adapter_version", "Adapter version decoding the current segment (0: base).",
                    ["camera"], [([name], float(s.adapter_version)) for name, s in sessions])
        yield gauge("adaptcast_receiver_connected", "1 while the camera has a WebRTC session.", ["camera"],
                    [([name], float(s.pc is not None)) for name, s in sessions])
        yield counter("adaptcast_receiver_archive_write_errors", "Archive files that could not be written.",
                      ["camera"], [([name], float(s.archive.write_errors if s.archive else 0)) for name, s in sessions])
        latency = HistogramMetricFamily("adaptcast_receiver_latency_seconds",
                                        "Glass-to-glass latency: capture at the sender to decoded frame here "
                                        "(the two clocks must agree: NTP).", labels=["camera"])
        for name, s in sessions:
            cumulative = list(itertools.accumulate(s.latency_counts))
            bounds = [*map(str, LATENCY_BUCKETS_SECONDS), "+Inf"]
            latency.add_metric([name], list(zip(bounds, map(float, cumulative))), s.latency_sum)
        yield latency
        yield counter("adaptcast_receiver_decode_worker_restarts", "Decode worker processes restarted after a crash.",
                      ["worker"], [([str(w["index"])], float(w["restarts"])) for w in self.pool.stats()["workers"]])
        yield counter("adaptcast_receiver_signaling_refused", "WHIP requests refused, by reason.", ["reason"],
                      [([reason], float(n)) for reason, n in sorted(self.whip.refused.items())])
