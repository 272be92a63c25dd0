"""The sender's metrics, read at scrape time from its cameras' stats snapshots (sender/stats.py:
the only part of the sender this module knows), and its small HTTP server (metrics, health,
readiness) on the configured address. docs/metrics.md lists them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from adaptcast.sender.stats import CameraStats
from adaptcast.shared.codec.modelfile import ModelInfo
from adaptcast.shared.metrics import build_info, by_reason, counter, daemon_registry, gauge, histogram, metrics_handler

CHANNEL_STATES = ("connecting", "open", "closing", "closed")
"""RTCDataChannel.readyState values; a camera without a connection counts as closed."""

CamerasStats = Callable[[], list[CameraStats]]
"""Every camera's stats, taken now."""


class SenderCollector(Collector):
    def __init__(self, cameras: CamerasStats, model: ModelInfo, device: torch.device) -> None:
        self.cameras = cameras
        self.model = model
        self.device = device

    def collect(self) -> Iterator[Metric]:
        cameras = self.cameras()  # one snapshot a scrape: every family agrees
        yield build_info("sender", self.model.name, self.model.sha256)
        yield from _capture(cameras)
        yield from _coding(cameras)
        yield from _link(cameras)
        if self.device.type == "cuda":
            yield gauge("adaptcast_sender_gpu_memory_bytes", "GPU memory allocated by torch.", ["device"],
                        [([str(self.device)], float(torch.cuda.memory_allocated(self.device)))])


def _capture(cameras: list[CameraStats]) -> Iterator[Metric]:
    cams = [(s.camera, s) for s in cameras]
    yield counter("adaptcast_sender_frames_captured", "Frames read from the camera and handed to the encoder.",
                  ["camera"], [([name], float(s.frames_captured)) for name, s in cams])
    yield counter("adaptcast_sender_frames_dropped", "Frames or records lost at the sender, by reason.",
                  ["camera", "reason"], [sample for name, s in cams for sample in by_reason(name, s.dropped)])
    yield gauge("adaptcast_sender_camera_up", "1 while the camera source delivers frames.", ["camera"],
                [([name], float(s.capture is not None and s.capture.live)) for name, s in cams])
    yield counter("adaptcast_sender_camera_reconnects", "Camera source reopened after a failure or stall.",
                  ["camera"], [([name], float(s.capture.reconnects if s.capture else 0)) for name, s in cams])


def _coding(cameras: list[CameraStats]) -> Iterator[Metric]:
    encoders = [(s.camera, s.encoder) for s in cameras]
    yield counter("adaptcast_sender_segments_encoded", "Segments coded, by the adapter they used: adapted "
                  "(recent), reused (older: a fit was skipped or failed), base (none, or too old).",
                  ["camera", "outcome"],
                  [sample for name, e in encoders for sample in by_reason(name, e.segment_outcomes)])
    yield counter("adaptcast_sender_fit_events", "Degradations of fitting, by event.", ["camera", "event"],
                  [sample for name, e in encoders for sample in by_reason(name, e.fit_events)])
    yield histogram("adaptcast_sender_fit_duration_seconds", "Wall time of each adapter fit.", ["camera"],
                    [([name], e.fit_duration) for name, e in encoders])
    yield counter("adaptcast_sender_fit_steps", "Optimisation steps run by the adapter fits.", ["camera"],
                  [([name], float(e.fit_steps)) for name, e in encoders])
    yield gauge("adaptcast_sender_fit_realtime_factor", "Last fit's seconds over a segment's (above 1 the "
                "fitter cannot keep up).", ["camera"],
                [([name], e.fit_realtime_factor) for name, e in encoders if e.fit_realtime_factor is not None])
    yield gauge("adaptcast_sender_bits_per_pixel", "Latent and adapter bits per pixel of the last segment.",
                ["camera"], [([name], e.bits_per_pixel) for name, e in encoders if e.bits_per_pixel is not None])
    yield gauge("adaptcast_sender_psnr_db", "RGB PSNR of the last I-frame as the base model and as the adapter "
                "in use decode it, against the original.", ["camera", "model"],
                [([name, model], value) for name, e in encoders for model, value in sorted(e.keyframe_psnr.items())])
    yield counter("adaptcast_sender_frames_coded", "Frames coded, by kind: intra (I-frame), predicted "
                  "(P-frame), skip (not coded: the receiver shows the reference again).", ["camera", "kind"],
                  [sample for name, e in encoders for sample in by_reason(name, e.frame_kinds)])
    yield counter("adaptcast_sender_backgrounds_coded", "Background pictures coded (a new one when the scene "
                  "changed or the last grew old).", ["camera"],
                  [([name], float(e.backgrounds_coded)) for name, e in encoders])
    yield counter("adaptcast_sender_background_bytes", "Bytes of background pictures sent, repeats after a "
                  "reconnection or keyframe request included.", ["camera"],
                  [([name], float(e.background_bytes)) for name, e in encoders])
    yield gauge("adaptcast_sender_background_psnr_db", "RGB PSNR of the background in force against the "
                "estimate it was coded from.", ["camera"],
                [([name], e.background_psnr) for name, e in encoders if e.background_psnr is not None])
    yield counter("adaptcast_sender_refine_steps", "Latent-refinement steps run on P-frames (as many a frame "
                  "as the measured speed allows).", ["camera"],
                  [([name], float(e.refine_steps)) for name, e in encoders])
    yield gauge("adaptcast_sender_load_level", "Live mode: the rung of work shed while frames leave the encoder "
                "late (0: none; 1: fitting; 2: background refinement; 3+: frames).", ["camera"],
                [([name], float(e.load_level)) for name, e in encoders])
    yield gauge("adaptcast_sender_adapter_version", "Adapter version the current segment is coded with "
                "(0: base).", ["camera"], [([name], float(e.coding_version)) for name, e in encoders])
    yield gauge("adaptcast_sender_quality_index", "Quality index the current segment is coded at (a "
                "variable-rate model's; 0 for a single-rate one).", ["camera"],
                [([name], e.quality) for name, e in encoders])
    rated = [(name, e.rate) for name, e in encoders if e.rate is not None]
    yield gauge("adaptcast_sender_target_bitrate_bps", "The configured target bitrate (cameras with one).",
                ["camera"], [([name], rate.target_bps) for name, rate in rated if rate.target_bps is not None])
    yield gauge("adaptcast_sender_bitrate_bps", "Bitrate of the last complete segment, everything sent counted "
                "(cameras coded with a variable-rate model).", ["camera"],
                [([name], rate.last_bps) for name, rate in rated if rate.last_bps is not None])
    yield gauge("adaptcast_sender_link_ceiling_bps", "What the link was measured to carry while it was the "
                "bottleneck (raised a little each segment since); absent while it keeps up.", ["camera"],
                [([name], rate.link_ceiling_bps) for name, rate in rated if rate.link_ceiling_bps is not None])


def _link(cameras: list[CameraStats]) -> Iterator[Metric]:
    cams = [(s.camera, s) for s in cameras]
    yield counter("adaptcast_sender_sent_bytes", "Bytes handed to the data channel, framing included, by kind.",
                  ["camera", "kind"],
                  [([name, kind], float(n)) for name, s in cams for kind, n in sorted(s.sent_bytes.items())])
    yield counter("adaptcast_sender_payload_bytes", "Bytes of the records themselves, by kind.",
                  ["camera", "kind"],
                  [([name, kind], float(n)) for name, s in cams
                   for kind, n in sorted(s.payload_bytes.items())])
    yield gauge("adaptcast_sender_send_queue_bytes", "Bytes waiting to be sent: the sender's queue and the data "
                "channel's buffer.", ["camera"],
                [([name], float(s.link.queued_bytes if s.link else 0)) for name, s in cams])
    yield gauge("adaptcast_sender_data_channel_state", "1 for the data channel's current state.",
                ["camera", "state"],
                [([name, state], float(state == _channel_state(s))) for name, s in cams for state in CHANNEL_STATES])
    yield counter("adaptcast_sender_connections", "WebRTC connections made.", ["camera"],
                  [([name], float(s.connections)) for name, s in cams])
    yield gauge("adaptcast_sender_rtt_seconds", "Heartbeat round trip to the receiver.", ["camera"],
                [([name], s.link.rtt_seconds) for name, s in cams if s.link and s.link.rtt_seconds is not None])


def _channel_state(camera: CameraStats) -> str:
    return camera.link.channel_state if camera.link else "closed"


def build_status_app(cameras: CamerasStats, model: ModelInfo, device: torch.device) -> web.Application:
    registry = daemon_registry(SenderCollector(cameras, model, device))
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        if not all(camera.link is not None for camera in cameras()):
            raise web.HTTPServiceUnavailable(text="not every camera is connected")
        return web.Response(text="ready")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
