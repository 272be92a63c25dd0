"""One camera's codec work: cutting frames into segments, fitting adapters, encoding frames.

Everything heavy runs in worker threads (torch releases the GIL), never on the event loop.
Fitting uses its own copy of the model, because it switches the model to training mode while
frames are being encoded with the frozen one.

- live mode: a frame is encoded as soon as it arrives, with the adapter fitted on an earlier
  segment; when a segment is complete its frames go to the fitter, and the new adapter is sent
  the moment the fit ends (its chunks travel between the latents of the segment being coded)
  and used from the next segment on. A fit still running at a segment boundary is not
  waited for (the previous adapter goes on), and a segment that ends while the fitter is
  busy is not fitted (counted: the fitter does not keep up).
- segment mode: a segment is buffered, fitted, and then encoded with its own adapter.

All decisions about adapter versions are taken on the event loop while no fit is running, so
the version a segment names is always one the receiver has been sent.

With the coding tools (`CodingTools`), P-frames that do not pay for their bits are skipped, and
segments start from the camera's background picture instead of an I-frame. The background is
estimated and coded in a worker thread on a model copy of its own (it takes many refinement
steps) while frames go on being coded; a new one is sent at the next segment boundary after it
is ready, and is then used from that segment on. Until the first is ready, segments start with
an I-frame. After a restart (a new connection, a keyframe request) the background in force is
sent again, right after the stream header.

P-frames are refined (`LatentRefinement`) with as many steps as the measured speed fits in a
share of the frame period (sender/refinement.py): none on a small CPU, several on a GPU.

With a variable-rate model, each segment is coded at a quality index that rate control
(sender/ratecontrol.py) chooses at the segment's start: towards the camera's target bitrate if
it has one, and below what the link was measured to carry when the link is the bottleneck
(`link_bps`, set by the transport). Skip decisions, refinement, backgrounds and adapter fits
all follow the index's lambda.

In live mode, when frames leave the encoder late, work is shed in order (sender/shedding.py):
fitting, then refinement (of frames and backgrounds), then frames (sent as skipped frames,
which cost nothing).

When fitting cannot keep up, quality degrades in a fixed order, each rung counted per segment
(`segment_outcomes`): a fit that waited for the device runs fewer steps (FitScheduler); a fit
that is skipped or fails leaves the previous adapter in use (`reused`); an adapter older than
`adapter_max_age_seconds` is no longer trusted with a scene that has moved on, and segments are
coded with the base model (`base`) until a fit lands again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import Counter
from dataclasses import KW_ONLY, dataclass, replace

import torch

from adaptcast.sender.capture import CapturedFrame
from adaptcast.sender.ratecontrol import RateController, RateSettings
from adaptcast.sender.refinement import RefinementBudget
from adaptcast.sender.scheduler import FitScheduler
from adaptcast.sender.shedding import LoadShedder
from adaptcast.sender.stats import EncoderStats
from adaptcast.shared.adapters.fitting import FitBudget, FitResult, StreamAdapter
from adaptcast.shared.adapters.lora import AdapterSpec
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.background import BackgroundKeeper, BackgroundSettings, background_coding
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameKind,
    FrameRecord,
    Record,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    snap_quality,
)
from adaptcast.shared.codec.defaults import DEFAULT_FIT_STEPS
from adaptcast.shared.codec.framecodec import FrameEncoder, LatentRefinement, SkipDecision
from adaptcast.shared.codec.modelfile import LoadedModel
from adaptcast.shared.codec.ssf import SynthesisWeights
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.errors import ConfigError
from adaptcast.shared.frames import FrameSize, RgbFrame, psnr, to_tensor
from adaptcast.shared.metrics import Histogram

log = logging.getLogger(__name__)

FIT_SHARE_OF_SEGMENT = 0.8
"""A fit may take this share of a segment's duration, so fitting keeps up with the camera (in
segment mode, less the time the segment's frames take to encode, since both run in turn)."""
FRESH_ADAPTER_AGE = {AdaptMode.LIVE: 2, AdaptMode.SEGMENT: 0}
"""Segments from the one an adapter was fitted on to the one it codes when fitting keeps up: live
mode codes segment k with the fit of k-2 (the fit of k-1 runs during k), segment mode codes a
segment with its own. An older adapter is `reused`."""
FIT_BUCKETS_SECONDS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
MAX_SEND_BACKLOG_SECONDS = 0.25
"""Live mode: a P-frame is not coded (sent as a skipped frame) while what waits to be sent takes
longer than this to leave; the transport drops frames still unsent after 1 s anyway."""


@dataclass(frozen=True)
class EncoderSettings:
    camera: str
    size: FrameSize
    fps: float
    segment_frames: int
    _: KW_ONLY
    mode: AdaptMode = AdaptMode.LIVE
    adapt: bool = True
    fit_steps: int = DEFAULT_FIT_STEPS
    adapter_max_age_seconds: float = 10.0
    """An adapter fitted on frames older than this codes no more segments: the base model does."""
    tools: CodingTools = CodingTools()
    refine_share: float = 0.5
    """Share of a frame period a P-frame may take, latent refinement included (0: no refinement)."""
    refine_max_steps: int = 10
    quality: float | None = None
    """A variable-rate model's quality index (None: the middle of its range); with `rate`, the
    first segment's."""
    rate: RateSettings | None = None
    """Follow this bitrate by choosing each segment's quality index (a variable-rate model)."""


@dataclass(frozen=True)
class Outgoing:
    """A record on its way to the receiver, with what the sender needs to schedule it."""

    record: Record
    segment: int | None = None
    frame: int | None = None
    captured_at: float | None = None
    """Capture time of a frame record (for staleness and latency)."""
    adapter_version: int | None = None
    """The version an adapter record carries."""


class CameraEncoder:
    def __init__(self, settings: EncoderSettings, loaded: LoadedModel, device: torch.device,
                 scheduler: FitScheduler | None = None) -> None:
        info = loaded.info
        if settings.rate and not info.variable_rate:
            raise ConfigError(f"camera {settings.camera}: a target bitrate needs a variable-rate model; "
                             f"{info.name} codes one rate")
        self.quality = info.coding_quality(settings.quality)
        """The quality index of the segment being coded."""
        if settings.adapt or settings.tools.skip or settings.tools.background:
            info.required_lambda(self.quality)  # refused at start-up, not at the first frame that needs it
        self.settings = settings
        self.device = device
        self.info = info
        self.encoder = FrameEncoder(loaded.model, settings.size, device)
        self.rate: RateController | None = None
        """A variable-rate model's rate control: towards the target bitrate if there is one, and
        below what the link carries always (without a target, never above the configured quality)."""
        if info.variable_rate:
            ceiling = info.max_quality if settings.rate else self.quality
            self.rate = RateController(settings.rate, ceiling, self.quality)
        self.link_bps: float | None = None
        """Set by the transport: the link's throughput while it is the bottleneck, else None."""
        self.send_backlog_seconds = 0.0
        """Set by the transport: how long what waits to be sent takes to leave. Beyond
        MAX_SEND_BACKLOG_SECONDS (live mode) P-frames are thinned at once, within the segment,
        rather than coded to go stale in the queue: a burst of motion on a slow link."""
        self._link_bps_in_segment: float | None = None
        self._background_bytes_in_segment = 0
        self.background: BackgroundKeeper | None = None
        self._background_encoder: FrameEncoder | None = None
        """Codes backgrounds in a worker thread: its own model copy, so that the refinement's
        training mode never touches the model coding frames meanwhile."""
        if settings.tools.background:
            background = settings.tools.background
            self.background = BackgroundKeeper(background, settings.fps)
            self._background_encoder = FrameEncoder(copy.deepcopy(loaded.model), settings.size, device)
        self.header = StreamHeader(loaded.info.sha256, loaded.info.name, settings.size.width, settings.size.height,
                                   settings.fps, settings.segment_frames, settings.camera)
        self.adapter: StreamAdapter | None = None
        if settings.adapt:
            budget = FitBudget(steps=settings.fit_steps)  # the seconds are set for each fit
            fit_model = copy.deepcopy(loaded.model).to(device)
            self.adapter = StreamAdapter(settings.camera, fit_model, loaded.info.sha256, AdapterSpec(),
                                         info.required_lambda(self.quality), budget)
        self.scheduler = scheduler or FitScheduler()
        """Shared by the cameras that fit on the same device."""
        self.counts: Counter[str] = Counter()
        """Degradations: fit_skipped (the fitter was busy, or the device was not free in time),
        fit_failed, snapshot_late (a restart coded a segment with the base model while a fit
        ran), segment_dropped (a restart cut a segment short), fit_shed and frame_shed (work
        shed under load: a segment not fitted, a frame skipped uncoded); frame_thinned (a frame
        skipped uncoded by rate control, to fit a target or a link below what the lowest quality
        costs); and update_declined (a fit whose update would have cost more than its estimated
        saving: not sent)."""
        self.segment_outcomes: Counter[str] = Counter()
        """Segments coded, by the rung of the degradation ladder: adapted, reused, base."""
        self.fit_duration = Histogram(FIT_BUCKETS_SECONDS)
        self.fit_steps = 0
        self.fit_realtime_factor: float | None = None
        """The last fit's seconds over a segment's: above 1 the fitter cannot keep up."""
        self.bits_per_pixel: float | None = None
        """The last complete segment's latent and adapter bits per pixel."""
        self.keyframe_psnr: dict[str, float] = {}
        """PSNR (dB) of the last I-frame as the base model and as the adapter in use decode it."""
        self.frame_kinds: Counter[str] = Counter()
        """Frames coded, by kind: intra, predicted, skip (decided, or shed under load)."""
        self.shedder = LoadShedder()
        """Live mode: how much work is shed while frames leave late."""
        self.refine_budget = RefinementBudget(settings.refine_share / settings.fps, settings.refine_max_steps)
        self.refine_steps = 0
        """Latent-refinement steps run on P-frames."""
        self._apply_quality(self.quality)
        self.backgrounds_coded = 0
        self.background_bytes = 0
        """Bytes of background records handed out, repeats after a restart included."""
        self.background_psnr: float | None = None
        """PSNR (dB) of the background in force against the estimate it was coded from."""
        self._background_record: BackgroundRecord | None = None
        """The background in force (segments start from it), sent again after a restart."""
        self._background_job: asyncio.Task | None = None
        self._send_background = False
        self._coded_in_segment = 0
        self._coded_last_segment = settings.segment_frames
        """Frames of the last segment that were coded (not skipped): what a new adapter would serve."""
        self.coding_version = 0
        """The adapter version the current segment is coded with (0: the base model)."""
        self.adapter_version = 0
        """The newest version sent to the receiver (0: none)."""
        self._weights: SynthesisWeights | None = None
        self._fitted_segment = 0
        """The segment `adapter_version` was fitted on."""
        self._segment_bytes = 0
        self._fit: asyncio.Task | None = None
        self._encode_seconds: float | None = None
        """Recent seconds per encoded frame (a moving average)."""
        self._segment = 0
        self._frame = 0
        self._position = 0
        self._buffer: list = []
        self._send_header = True
        self._send_snapshot = True

    def restart(self) -> None:
        """Start afresh at the next frame: stream header, adapter snapshot, an I-frame.

        Called for every new connection and every keyframe request; a half-sent segment is
        abandoned (its frames were already counted as sent or dropped by the transport).
        """
        if self._position:
            self.counts["segment_dropped"] += 1
            self._segment += 1
        self._position = 0
        self._buffer = []
        self._send_header = self._send_snapshot = True
        self._send_background = self._background_record is not None

    async def push(self, captured: CapturedFrame) -> list[Outgoing]:
        """Take one captured frame; return what is ready to send, in order."""
        if self.settings.mode == AdaptMode.SEGMENT:
            return await self._push_segment_mode(captured)
        out = self._collect_fit()
        if self.background:
            self.background.observe(captured.rgb)
        if self._position == 0:
            out += self._start_segment()
        out.append(await self._encode(captured))
        if self.adapter:
            self._buffer.append(captured.rgb)
        if self._position == self.settings.segment_frames:
            fitted_segment = self._segment
            self._end_segment()
            if self.adapter and not self.shedder.fits_allowed:
                self.counts["fit_shed"] += 1
            elif self.adapter:
                if self._fit is None:
                    allowance = FIT_SHARE_OF_SEGMENT * self.settings.segment_frames / self.settings.fps
                    self._fit = asyncio.create_task(self._fit_on(self.adapter, self._buffer, allowance, fitted_segment))
                else:
                    self.counts["fit_skipped"] += 1
            self._buffer = []
        return out

    def stats(self) -> EncoderStats:
        return EncoderStats(
            segment_outcomes=dict(self.segment_outcomes), fit_events=dict(self.counts),
            fit_duration=self.fit_duration.snapshot(), fit_steps=self.fit_steps,
            fit_realtime_factor=self.fit_realtime_factor, bits_per_pixel=self.bits_per_pixel,
            keyframe_psnr=dict(self.keyframe_psnr), frame_kinds=dict(self.frame_kinds),
            backgrounds_coded=self.backgrounds_coded, background_bytes=self.background_bytes,
            background_psnr=self.background_psnr, refine_steps=self.refine_steps, load_level=self.shedder.level,
            coding_version=self.coding_version, quality=self.quality,
            rate=self.rate.stats() if self.rate else None,
        )

    def finish(self) -> Outgoing:
        """The end record, once the camera has no more frames (a file played once)."""
        return Outgoing(StreamEnd(self._frame, self._segment + (1 if self._position else 0)))

    async def close(self) -> None:
        """Wait for a running fit or background, so that no thread outlives the encoder."""
        running = [task for task in (self._fit, self._background_job) if task is not None]
        if running:
            await asyncio.wait(running)

    async def _push_segment_mode(self, captured: CapturedFrame) -> list[Outgoing]:
        self._buffer.append(captured)
        if len(self._buffer) < self.settings.segment_frames:
            return []
        segment, self._buffer = self._buffer, []
        if self.background:
            for frame in segment:
                self.background.observe(frame.rgb)
        out: list[Outgoing] = []
        if self.adapter:
            self._fit = asyncio.create_task(self._fit_on(self.adapter, [c.rgb for c in segment],
                                                         self._fit_around_encoding(), self._segment))
            await asyncio.wait([self._fit])
            out += self._collect_fit()
        out += self._start_segment()
        for frame in segment:
            out.append(await self._encode(frame))
        self._end_segment()
        return out

    def _fit_around_encoding(self) -> float:
        """Segment mode: the fit's seconds, leaving the encoder its time within the segment's duration."""
        segment_seconds = self.settings.segment_frames / self.settings.fps
        encoding = (self._encode_seconds or 0.0) * self.settings.segment_frames
        return max(0.05 * segment_seconds, FIT_SHARE_OF_SEGMENT * segment_seconds - encoding)

    def _collect_fit(self) -> list[Outgoing]:
        """The update of a finished fit, sent at once; its version is used from the next segment.

        After a restart the receiver starts afresh, so the fit's increment would be useless to
        it: the new version goes as a snapshot, once the stream header has gone first.
        """
        adapter = self.adapter
        if adapter is None or self._fit is None or not self._fit.done():
            return []
        task, self._fit = self._fit, None
        try:
            fitted = task.result()
        except Exception:  # a failed fit must not stop the camera: the old adapter goes on
            log.exception("camera %s: adapter fit failed; keeping version %d", self.settings.camera,
                          self.adapter_version)
            self.counts["fit_failed"] += 1
            return []
        if fitted is None:
            self.counts["fit_skipped"] += 1
            return []
        update, result, segment = fitted
        self.fit_duration.observe(result.seconds)
        self.fit_steps += result.steps
        self.fit_realtime_factor = result.seconds * self.settings.fps / self.settings.segment_frames
        self._fitted_segment = segment
        if update is None:  # would not pay for its bits: the version in force still fits the scene
            self.counts["update_declined"] += 1
            return []
        if self._send_snapshot:
            if self._send_header:
                return []  # the next segment start sends the header, then this version's snapshot
            update = adapter.snapshot()
            self._send_snapshot = False
        self.adapter_version, self._weights = adapter.version, adapter.weights
        self._segment_bytes += len(update)
        return [Outgoing(AdapterRecord(update), adapter_version=self.adapter_version)]

    def _start_segment(self) -> list[Outgoing]:
        out: list[Outgoing] = []
        if self._send_header:
            out.append(Outgoing(self.header))
            self._send_header = False
        out += self._background_for_segment()
        if self._send_snapshot:
            if self.adapter is None:
                self._send_snapshot = False
            elif self._fit is None:
                snapshot = self.adapter.snapshot()
                self.adapter_version, self._weights = self.adapter.version, self.adapter.weights
                if snapshot is not None:
                    out.append(Outgoing(AdapterRecord(snapshot), adapter_version=self.adapter_version))
                    self._segment_bytes += len(snapshot)
                self._send_snapshot = False
            else:  # a fit is running: the base model until the snapshot can go
                self.adapter_version, self._weights = 0, None
                self.counts["snapshot_late"] += 1
        outcome = self._ladder_rung()
        self.segment_outcomes[outcome] += 1
        self.coding_version = 0 if outcome == "base" else self.adapter_version
        self.encoder.weights = None if outcome == "base" else self._weights
        if self.rate:
            self._apply_quality(snap_quality(self.rate.quality))
        background = self._background_record.index if self._background_record else 0
        if background:
            self.encoder.start_from_background(background)
        out.append(Outgoing(SegmentStart(self._segment, self._frame, self.settings.segment_frames,
                                         self.coding_version, background, self.quality), segment=self._segment))
        return out

    def _apply_quality(self, quality: float) -> None:
        """Code from now on at `quality`: its lambda decides skips and refinement, and is what
        adapters are fitted for."""
        self.quality = self.encoder.quality = quality
        self._lmbda = self.info.lambda_at(quality)
        if self.settings.tools.skip:
            self.encoder.skip = SkipDecision(self.info.required_lambda(quality))

    def _background_for_segment(self) -> list[Outgoing]:
        """A background finished since the last segment, or the one in force again after a
        restart; then start estimating the next one if none is under way."""
        out: list[Outgoing] = []
        if self._background_job is not None and self._background_job.done():
            task, self._background_job = self._background_job, None
            try:
                coded = task.result()
            except Exception:  # the background in force goes on
                log.exception("camera %s: coding a background failed", self.settings.camera)
                coded = None
            if coded is not None:
                record, picture = coded
                self.encoder.keep_background(record.index, picture)
                self._background_record, self._send_background = record, True
                self.backgrounds_coded += 1
                log.info("camera %s: background %d coded (%d bytes, %.1f dB)", self.settings.camera, record.index,
                         len(record.string), self.background_psnr)
        if self._send_background and self._background_record is not None:
            length = len(self._background_record.string)
            out.append(Outgoing(self._background_record))
            self.background_bytes += length
            self._segment_bytes += length
            self._background_bytes_in_segment += length
            self._send_background = False
        settings = self.settings.tools.background
        if self.background and self._background_encoder and settings and self._background_job is None:
            self._background_job = asyncio.create_task(asyncio.to_thread(
                self._code_background, self.background, self._background_encoder, settings))
        return out

    def _code_background(self, keeper: BackgroundKeeper, encoder: FrameEncoder,
                         settings: BackgroundSettings) -> tuple[BackgroundRecord, torch.Tensor] | None:
        """(In a worker thread.) Code the background estimate when a new one is due, at the
        stream's quality index then."""
        encoder.quality, lmbda = background_coding(self.info, self.quality, settings)
        refine = settings.refine_steps and self.shedder.refinement
        encoder.background_refinement = LatentRefinement(lmbda, settings.refine_steps) if refine else None
        record = keeper.code_if_due(encoder)
        if record is None:
            return None
        self.background_psnr = keeper.sent_psnr
        return record, encoder.backgrounds[record.index]

    def _ladder_rung(self) -> str:
        """How the segment about to start is coded: with a recent adapter, an older one, or the
        base model (none yet, or the newest too old to trust)."""
        if not self.adapter_version:
            return "base"
        age = self._segment - self._fitted_segment
        if age * self.settings.segment_frames / self.settings.fps > self.settings.adapter_max_age_seconds:
            return "base"
        return "adapted" if age <= FRESH_ADAPTER_AGE[self.settings.mode] else "reused"

    def _end_segment(self) -> None:
        self._coded_last_segment, self._coded_in_segment = self._coded_in_segment, 0
        frames = self._position
        if frames:
            pixels = frames * self.settings.size.width * self.settings.size.height
            self.bits_per_pixel = self._segment_bytes * 8 / pixels
            if self.rate:
                bound = self.rate.link_ceiling_bps is not None
                self.rate.segment_coded(self._segment_bytes * 8, frames / self.settings.fps, self._link_bps_in_segment,
                                        one_off_bits=self._background_bytes_in_segment * 8,
                                        coded_share=self._coded_last_segment / frames)
                self._log_link(self.rate, bound)
        self._link_bps_in_segment = None
        self._background_bytes_in_segment = 0
        self._segment_bytes = 0
        self._segment += 1
        self._position = 0

    def _log_link(self, rate: RateController, was_bound: bool) -> None:
        ceiling, sent = rate.link_ceiling_bps, rate.last_bps
        if ceiling is not None and sent is not None and (not was_bound or self._link_bps_in_segment is not None):
            log.info("camera %s: the link carries %.1f kbit/s, less than the stream sent (%.1f kbit/s); quality index "
                     "%.2f next", self.settings.camera, ceiling / 1000, sent / 1000, rate.quality)
        elif ceiling is None and was_bound:
            log.info("camera %s: the link keeps up again; quality index %.2f next", self.settings.camera, rate.quality)

    async def _encode(self, captured: CapturedFrame) -> Outgoing:
        keyframe = self._position == 0 and self._background_record is None
        record: FrameRecord
        rate_stride = self.rate.frame_stride if self.rate else 1
        backlogged = self.settings.mode == AdaptMode.LIVE and self.send_backlog_seconds > MAX_SEND_BACKLOG_SECONDS
        if not keyframe and (backlogged or self._position % max(self.shedder.frame_stride, rate_stride)):
            record, _ = self.encoder.skip_frame(self._frame)
            shed = not backlogged and self.shedder.frame_stride >= rate_stride
            self.counts["frame_shed" if shed else "frame_thinned"] += 1
        else:
            steps = self._refine_steps(keyframe)
            self.encoder.refinement = (
                LatentRefinement(self._lmbda, steps) if steps and self._lmbda is not None else None)
            started = time.perf_counter()
            record = await asyncio.to_thread(self._code_frame, captured.rgb, keyframe)
            seconds = time.perf_counter() - started
            self._encode_seconds = (seconds if self._encode_seconds is None
                                    else 0.9 * self._encode_seconds + 0.1 * seconds)
            if not keyframe:
                self.refine_budget.observe(steps, seconds)
                self.refine_steps += steps
        if self.settings.mode == AdaptMode.LIVE:
            self._observe_load(time.time() - captured.captured_at)
        if self.link_bps is not None:  # the lowest throughput the link showed while congested
            self._link_bps_in_segment = min(self.link_bps, self._link_bps_in_segment or self.link_bps)
        self.frame_kinds[record.kind.name.lower()] += 1
        self._coded_in_segment += record.kind != FrameKind.SKIP
        record = replace(record, captured_us=int(captured.captured_at * 1e6))
        outgoing = Outgoing(record, self._segment, self._frame, captured.captured_at)
        self._segment_bytes += len(record.string)
        self._frame += 1
        self._position += 1
        return outgoing

    def _refine_steps(self, keyframe: bool) -> int:
        """Refinement steps for the frame about to be coded: P-frames only, within the measured
        budget, and none once the load ladder has shed refinement."""
        if keyframe or not self.settings.refine_share or self._lmbda is None or not self.shedder.refinement:
            return 0
        return self.refine_budget.steps()

    def _observe_load(self, lag: float) -> None:
        level = self.shedder.observe(lag, time.monotonic())
        if level is not None:
            log.info("camera %s: frames leave the encoder %.2f s after capture; load level %d (fitting %s, "
                     "refinement %s, 1 frame in %d coded)", self.settings.camera,
                     self.shedder.lag_seconds, level, "on" if self.shedder.fits_allowed else "off",
                     "on" if self.shedder.refinement else "off", self.shedder.frame_stride)

    def _code_frame(self, rgb, keyframe: bool) -> FrameRecord:
        """Code a frame (in a worker thread); an I-frame is also measured against the original as
        the adapter and as the base model show it: the quality the adapter buys."""
        record, shown = self.encoder.encode(rgb, self._frame, keyframe)
        if keyframe:
            adapted = psnr(rgb, shown)
            weights = self.encoder.weights
            base = adapted if weights is None else psnr(rgb, self.encoder.reconstruct_keyframe(None))
            self.keyframe_psnr = {"base": base, "adapted": adapted}
        return record

    async def _fit_on(self, adapter: StreamAdapter, frames: list[RgbFrame], allowance: float,
                      segment: int) -> tuple[bytes | None, FitResult, int] | None:
        """Fit on `frames` (of `segment`) within `allowance` seconds from now, waiting for the
        device included; None when the device was not free in time."""
        adapter.quality, adapter.lmbda = self.quality, self.info.required_lambda(self.quality)  # the quality in force

        def fit(seconds: float) -> tuple[bytes | None, FitResult, int]:
            adapter.budget = replace(adapter.budget, seconds=seconds)
            padded = [to_tensor(rgb, self.encoder.padded, self.device) for rgb in frames]
            served = max(1, self._coded_last_segment) if self.settings.tools.adapter_gate else None
            update, result = adapter.fit(padded, served)
            log.debug("camera %s: adapter version %d fitted in %.2f s (%d steps)", self.settings.camera,
                      adapter.version, result.seconds, result.steps)
            return update, result, segment

        return await self.scheduler.run(time.monotonic() + allowance,
                                        lambda seconds: asyncio.to_thread(fit, seconds))
