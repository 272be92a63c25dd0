"""The sender's metrics, read from its camera streamers at scrape time, and its small HTTP
server (metrics, health, readiness) on the configured address."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sender.daemon import CameraStreamer

from shared.metrics import by_reason, counter, gauge, metrics_handler


class SenderCollector(Collector):
    def __init__(self, streamers: list[CameraStreamer]) -> None:
        self.streamers = streamers

    def collect(self) -> Iterator[Metric]:
        cams = [(s.camera.name, s) for s in self.streamers]
        yield counter("adaptcast_sender_frames_encoded", "Frames captured and encoded.", ["camera"],
                      [([name], float(s.frames)) for name, s in cams])
        yield counter("adaptcast_sender_frames_dropped", "Frames or records not sent, by reason.", ["camera", "reason"],
                      [sample for name, s in cams for sample in by_reason(
                          name, s.dropped + (s.capture.dropped if s.capture else {}) + s.link_counts("dropped"))])
        yield counter("adaptcast_sender_sent_bytes", "Bytes handed to the data channel, framing included, by kind.",
                      ["camera", "kind"],
                      [([name, kind], float(n)) for name, s in cams for kind, n in sorted(s.link_counts("sent_bytes").items())])
        yield counter("adaptcast_sender_payload_bytes", "Bytes of the records themselves, by kind (latent, adapter).",
                      ["camera", "kind"],
                      [([name, kind], float(n)) for name, s in cams
                       for kind, n in sorted(s.link_counts("payload_bytes").items())])
        yield counter("adaptcast_sender_encoder_events", "Adaptation degradations, by event.", ["camera", "event"],
                      [sample for name, s in cams for sample in by_reason(name, s.encoder.counts)])
        yield counter("adaptcast_sender_fit_seconds", "Time spent fitting adapters.", ["camera"],
                      [([name], float(sum(s.encoder.fit_seconds))) for name, s in cams])
        yield counter("adaptcast_sender_fits", "Adapter fits finished.", ["camera"],
                      [([name], float(len(s.encoder.fit_seconds))) for name, s in cams])
        yield gauge("adaptcast_sender_adapter_version", "Adapter version new segments are coded with (0: base).",
                    ["camera"], [([name], float(s.encoder.adapter_version)) for name, s in cams])
        yield gauge("adaptcast_sender_connected", "1 while the camera's WebRTC connection is up.", ["camera"],
                    [([name], float(s.sender is not None)) for name, s in cams])
        yield counter("adaptcast_sender_connections", "WebRTC connections made.", ["camera"],
                      [([name], float(s.connections)) for name, s in cams])
        yield gauge("adaptcast_sender_rtt_seconds", "Heartbeat round trip to the receiver.", ["camera"],
                    [([name], s.sender.rtt_seconds) for name, s in cams if s.sender and s.sender.rtt_seconds is not None])


def build_status_app(streamers: list[CameraStreamer]) -> web.Application:
    registry = CollectorRegistry()
    registry.register(SenderCollector(streamers))
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        if not all(s.sender is not None for s in streamers):
            raise web.HTTPServiceUnavailable(text="not every camera is connected")
        return web.Response(text="ready")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
