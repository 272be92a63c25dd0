"""`adaptcast sender`: every configured camera captured, encoded and streamed to the receiver.

Each camera runs two tasks: a pump (capture, segments, fitting, encoding) and a link (the
WebRTC connection, rebuilt with backoff whenever it dies). While the link is down the pump
drops frames instead of encoding them, and counts them; every new connection restarts the
stream with a header, an adapter snapshot and an I-frame.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time
from collections import Counter
from typing import Any

import torch
from aiohttp import web

from adaptcast.sender.capture import QUEUE_SECONDS, CameraSource, Capture
from adaptcast.sender.encoder import CameraEncoder, EncoderSettings
from adaptcast.sender.metrics import build_status_app
from adaptcast.sender.ratecontrol import RateSettings
from adaptcast.sender.scheduler import FitScheduler
from adaptcast.sender.stats import CameraStats
from adaptcast.sender.transport import (
    STALE_FRAME_SECONDS,
    ConnectionLost,
    ReceiverUnreachable,
    SignalingError,
    StreamSender,
    WhipConnection,
    wait_until_ready,
)
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.background import BackgroundSettings
from adaptcast.shared.codec.modelfile import LoadedModel, load_model
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.config import ReceiverLinkConfig, SenderCameraConfig, SenderConfig
from adaptcast.shared.device import pick_device, usable_cores

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.5
FAULT_DROP_ADAPTER_ENV = "ADAPTCAST_FAULT_DROP_ADAPTER_VERSIONS"
"""Fault injection for tests and drills: comma-separated adapter versions whose first update is
not sent, so the receiver's fallback and recovery can be watched on a real stream."""
DRAIN_SECONDS = 10.0
LINK_COUNTERS = ("sent_bytes", "payload_bytes", "dropped")
"""At the end of a file played once: how long to wait for the last records to leave."""


def _coding_tools(camera: SenderCameraConfig) -> CodingTools:
    background = camera.background
    settings = BackgroundSettings(**background.model_dump(exclude={"enabled"})) if background.enabled else None
    return CodingTools(skip=camera.skip, background=settings, adapter_gate=camera.adapter_gate)


class CameraStreamer:
    """One camera, from capture to the receiver."""

    def __init__(self, camera: SenderCameraConfig, receiver: ReceiverLinkConfig, loaded: LoadedModel,
                 device: torch.device, ssl_context: ssl.SSLContext | None, scheduler: FitScheduler) -> None:
        self.camera = camera
        self.endpoint = receiver.whip_url(camera.name)
        self.ready_url = receiver.ready_url
        self.ssl_context = ssl_context
        rate = (RateSettings(camera.bitrate.target_kbps * 1000, camera.bitrate.ceiling_kbps * 1000)
                if camera.bitrate else None)
        self.encoder = CameraEncoder(
            EncoderSettings(camera.name, camera.size, camera.fps, camera.segment_frames, mode=camera.mode,
                            adapt=camera.adapt, fit_steps=camera.fit_steps,
                            adapter_max_age_seconds=camera.adapter_max_age_seconds, tools=_coding_tools(camera),
                            refine_share=camera.refine_share, refine_max_steps=camera.refine_max_steps,
                            quality=camera.quality, rate=rate),
            loaded, device, scheduler,
        )
        self.sender: StreamSender | None = None
        self.connected = asyncio.Event()
        self.dropped: Counter[str] = Counter()
        """Frames encoded or captured but never handed to a connection, by reason."""
        self._ended: dict[str, Counter[str]] = {field: Counter() for field in LINK_COUNTERS}
        """The counters of connections that ended."""
        self.connections = 0
        self.frames = 0
        """Frames captured and handed to the encoder."""
        self.capture: Capture | None = None
        self._drop_adapter_versions = _versions_to_drop()

    async def run(self) -> None:
        """Stream until the source ends (a file played once) or the task is cancelled.

        Capture starts once the receiver first answers: until then there is nowhere to send
        frames. Later outages drop frames, counted.
        """
        link = asyncio.create_task(self._link())
        try:
            await self.connected.wait()
            # segment mode takes a segment at a time: room for the next one while it works
            segment_mode = self.camera.mode == AdaptMode.SEGMENT
            queue_seconds = QUEUE_SECONDS + (2 * self.camera.segment_seconds if segment_mode else 0)
            camera = self.camera
            self.capture = capture = Capture(CameraSource(
                camera.name, camera.source, camera.size, camera.fps, loop=camera.loop,
                connect_timeout_seconds=camera.connect_timeout_seconds,
                reconnect_max_seconds=camera.reconnect_max_seconds, queue_seconds=queue_seconds,
                timecode=camera.timecode,
            ))
            await self._pump(capture)
            if self.sender is not None:
                self.sender.put([self.encoder.finish()])
                await self.sender.drained(DRAIN_SECONDS)
            log.info("camera %s: source ended after %d frames; dropped before sending: %s; sender: %s; encoder: %s",
                     self.camera.name, self.frames, dict(self.dropped + capture.dropped),
                     dict(self.sender.dropped) if self.sender else "disconnected", dict(self.encoder.counts))
        finally:
            if self.capture is not None:
                self.capture.close()
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)
            await self.encoder.close()

    def stats(self) -> CameraStats:
        capture = self.capture.stats() if self.capture else None
        return CameraStats(
            camera=self.camera.name, frames_captured=self.frames,
            dropped=dict(self.dropped + Counter(capture.dropped if capture else {}) + self.link_counts("dropped")),
            sent_bytes=dict(self.link_counts("sent_bytes")), payload_bytes=dict(self.link_counts("payload_bytes")),
            connections=self.connections, capture=capture, encoder=self.encoder.stats(),
            link=self.sender.stats() if self.sender else None,
        )

    def link_counts(self, field: str) -> Counter[str]:
        """A StreamSender counter (sent_bytes, payload_bytes, dropped) summed over every connection."""
        return self._ended[field] + (getattr(self.sender, field) if self.sender else Counter())

    async def _pump(self, capture: Capture) -> None:
        async for frame in capture.frames():
            if self.sender is None:
                self.dropped["disconnected"] += 1
                continue
            if self.camera.mode == AdaptMode.LIVE and time.time() - frame.captured_at > STALE_FRAME_SECONDS:
                # a short CPU leaves captured frames waiting: coding them would only have the
                # transport drop them as stale, with the rest of their segment
                self.dropped["stale"] += 1
                continue
            self.frames += 1
            self.encoder.link_bps = self.sender.link_bps()
            self.encoder.send_backlog_seconds = self.sender.backlog_seconds()
            items = await self.encoder.push(frame)
            if self.sender is not None:
                self.sender.put(items)
            else:
                self.dropped["disconnected"] += sum(1 for i in items if i.frame is not None)

    async def _link(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            connection = WhipConnection(self.endpoint, self.camera.token.get_secret_value(),
                                        self.camera.connect_timeout_seconds, self.ssl_context)
            try:
                await connection.open()
            except SignalingError as exc:
                # a receiver that refused is asked again after the backoff; one that did not answer
                # at all is watched, so that the stream resumes as soon as it is back
                unreachable = isinstance(exc, ReceiverUnreachable)
                log.warning("camera %s: cannot connect to %s (%s); retrying %s %.1f s", self.camera.name,
                            self.endpoint, exc, "once it is ready, within" if unreachable else "in", backoff)
                if unreachable:
                    await wait_until_ready(self.ready_url, backoff, self.ssl_context)
                else:
                    await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.camera.reconnect_max_seconds)
                continue
            backoff = FIRST_BACKOFF_SECONDS
            self.connections += 1
            log.info("camera %s: connected to %s (connection %d)", self.camera.name, self.endpoint, self.connections)
            self.encoder.restart()
            self.sender = StreamSender(self.camera.name, connection, self.camera.mode == AdaptMode.LIVE,
                                       lambda reason: self.encoder.restart(), self._drop_adapter_versions)
            self.connected.set()
            try:
                await self.sender.run()
            except ConnectionLost as exc:
                log.warning("camera %s: connection lost (%s); reconnecting", self.camera.name, exc)
            finally:
                self.sender.abandon()
                for field in LINK_COUNTERS:
                    self._ended[field] += getattr(self.sender, field)
                self.sender = None
                await connection.close()


def _versions_to_drop() -> set[int]:
    text = os.environ.get(FAULT_DROP_ADAPTER_ENV, "")
    try:
        return {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        raise ValueError(f"{FAULT_DROP_ADAPTER_ENV} must be comma-separated integers, got {text!r}") from None


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


async def run_sender(config: SenderConfig, stop: asyncio.Event | None = None) -> None:
    """Run every camera until `stop` is set (or SIGINT/SIGTERM), or until all sources end."""
    loaded = load_model(config.model)
    device = pick_device(config.device)
    loaded.model.to(device)
    if device.type == "cpu":
        # encoding and fitting run at the same time in two threads: with every core each,
        # their OpenMP pools would fight and both would crawl
        torch.set_num_threads(max(1, usable_cores() // 2))
    context = _ssl_context(str(config.receiver.ca_file) if config.receiver.ca_file else None)
    scheduler = FitScheduler()  # the cameras' fits take turns on the device
    streamers = [CameraStreamer(camera, config.receiver, loaded, device, context, scheduler)
                 for camera in config.cameras]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("sender: %d cameras, model %s on %s, receiver %s", len(streamers), loaded.info.name, device,
             config.receiver.url)
    runner = web.AppRunner(build_status_app(lambda: [s.stats() for s in streamers], loaded.info, device),
                           access_log=None)
    await runner.setup()
    metrics_tls = config.metrics.tls.server_context() if config.metrics.tls else None
    await web.TCPSite(runner, config.metrics.host, config.metrics.port, ssl_context=metrics_tls).start()
    scheme = "https" if metrics_tls else "http"
    for host, port in (address[:2] for address in runner.addresses):
        log.info("sender: metrics and health on %s://%s:%d/metrics", scheme, host, port)
    cameras = asyncio.gather(*(s.run() for s in streamers))
    stopper = asyncio.create_task(stop.wait())
    failure: BaseException | None = None
    try:
        waiting: list[asyncio.Future[Any]] = [cameras, stopper]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if cameras in done:
            failure = cameras.exception()
    finally:
        cameras.cancel()
        stopper.cancel()
        await asyncio.gather(cameras, return_exceptions=True)
        await runner.cleanup()
        log.info("sender: stopped")
    if failure is not None:  # a camera's pipeline broke: say so and exit non-zero, for the service manager
        raise failure
