"""`adaptcast receiver`: the WHIP endpoint, every camera's pipeline, the live view and archive."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from adaptcast.receiver.archive import ArchiveWriter
from adaptcast.receiver.h264feed import H264Feed
from adaptcast.receiver.live import LiveView
from adaptcast.receiver.metrics import ReceiverCollector, RepublishCollector
from adaptcast.receiver.rtsp import RtspServer
from adaptcast.receiver.server import WhipServer
from adaptcast.receiver.session import CameraSession
from adaptcast.receiver.viewers import ViewerGate
from adaptcast.receiver.whep import WhepServer
from adaptcast.receiver.workers import DecodePool
from adaptcast.shared.codec.modelfile import load_model
from adaptcast.shared.config import ReceiverConfig, TlsConfig
from adaptcast.shared.metrics import daemon_registry, metrics_handler

log = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/whip/{camera}", "/whip/{camera}/{session}", "/healthz", "/readyz", "/metrics"})
"""Routes without the viewer checks: WHIP checks each camera's token, and the probes and Prometheus
are not viewers. Every other route (the live view, /api/cameras, anything added) needs a viewer."""


async def run_receiver(config: ReceiverConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM)."""
    model = load_model(config.model).info  # fails now, not in a worker, when the model is bad
    for other in config.models:
        load_model(other)
    memory = config.worker_memory_mb << 20 if config.worker_memory_mb is not None else None
    pool = DecodePool(config.model, config.device, config.workers, threads_per_worker=config.threads_per_worker,
                      other_models=config.models, memory_limit_bytes=memory)
    await pool.start()
    live = LiveView()
    sessions: dict[str, CameraSession] = {}
    feeds: dict[str, H264Feed] = {}
    for camera in config.cameras:
        archive = None
        if config.archive:
            archive = ArchiveWriter(
                config.archive.dir, camera.name, config.archive.max_age_hours * 3600, config.archive.max_bytes,
                snapshot_for=_snapshots(sessions, camera.name),
                max_file_bytes=config.archive.max_file_bytes, min_free_bytes=config.archive.min_free_bytes,
            )
        feeds[camera.name] = H264Feed(camera.name, config.h264)
        sessions[camera.name] = CameraSession(camera.name, pool, live, archive, config.heartbeat_timeout_seconds,
                                              config.limits_for(camera), feeds[camera.name])
    rtsp = None
    if config.rtsp.enabled:
        rtsp = RtspServer(config.rtsp, feeds, {v.name: v.password_hash for v in config.viewers})
        try:
            await rtsp.start()  # RtspUnavailable, naming what to install, stops the receiver here
        except BaseException:
            await pool.close()
            raise
    whip = WhipServer(sessions, {c.name: c.token.get_secret_value() for c in config.cameras}, config.peer_limits)
    viewers = ViewerGate({v.name: v.password_hash for v in config.viewers}, config.viewer_session_hours * 3600,
                         config.allowed_hosts, OPEN_ROUTES, secure_cookie=config.tls is not None)
    whep = WhepServer(feeds, config.whep)
    registry = daemon_registry(
        ReceiverCollector(lambda: [s.stats() for s in sessions.values()], whip.stats, viewers.stats, pool.stats, model),
        RepublishCollector(lambda: [f.stats() for f in feeds.values()], rtsp.stats if rtsp else None, whep.stats),
    )
    app = web.Application()
    whip.add_routes(app)
    whep.add_routes(app)  # its sessions end when the app shuts down
    viewers.add_routes(app)
    live.add_routes(app)
    metrics_app = web.Application() if config.metrics else app
    metrics_app.router.add_get("/metrics", metrics_handler(registry))
    runner = await _serve(app, config.listen.host, config.listen.port, config.tls)
    metrics_runner = None
    if config.metrics:
        metrics_runner = await _serve(metrics_app, config.metrics.host, config.metrics.port, config.metrics.tls)
    whip.ready = True
    scheme = "https" if config.tls else "http"
    for host, port in (address[:2] for address in runner.addresses):
        log.info("receiver: listening on %s://%s:%d (model %s, %d decode workers)", scheme, host, port, config.model,
                 config.workers)
    if config.metrics and metrics_runner:
        scheme = "https" if config.metrics.tls else "http"
        for host, port in (address[:2] for address in metrics_runner.addresses):
            log.info("receiver: metrics on %s://%s:%d/metrics", scheme, host, port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status_task = asyncio.create_task(_publish_status(live, sessions))
    try:
        await stop.wait()
    finally:
        status_task.cancel()
        whip.ready = False
        if rtsp is not None:
            await rtsp.close()
        for session in sessions.values():
            await session.close()
        for feed in feeds.values():
            await feed.close()
        await runner.cleanup()
        if metrics_runner:
            await metrics_runner.cleanup()
        await pool.close()
        log.info("receiver: stopped")


def _snapshots(sessions: dict[str, CameraSession], camera: str) -> Callable[[int], bytes | None]:
    """The camera's archive's source of adapter snapshots: its session, which is made after the
    archive (it is given the archive) and looked up when asked."""
    return lambda version: sessions[camera].snapshot_for(version)


async def _serve(app: web.Application, host: str, port: int, tls: TlsConfig | None) -> web.AppRunner:
    """`app` listening on host:port (HTTPS with `tls`); the runner to clean up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = tls.server_context() if tls else None
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return runner


async def _publish_status(live: LiveView, sessions: dict[str, CameraSession]) -> None:
    """Refresh every camera's figures once a second, also when no frames arrive (stalled, offline)."""
    while True:
        for name, session in sessions.items():
            live.update_status(name, session.status())
        await asyncio.sleep(1.0)
