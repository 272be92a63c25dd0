"""The sender's encoder, fit scheduler and send pacing, without the network: what goes out, in
what order, how fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import torch

from adaptcast.sender.capture import CapturedFrame
from adaptcast.sender.encoder import CameraEncoder, EncoderSettings
from adaptcast.sender.refinement import RefinementBudget
from adaptcast.sender.scheduler import FitScheduler
from adaptcast.sender.shedding import MAX_LEVEL, LoadShedder
from adaptcast.sender.transport import DrainRate
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.adapters.update import decode_update
from adaptcast.shared.codec.background import BackgroundSettings
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameKind,
    FrameRecord,
    SegmentStart,
    StreamHeader,
)
from adaptcast.shared.codec.modelfile import BUNDLED_DIR, DEFAULT_MODEL, load_model_file
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.streamdecoder import StreamDecoder
from adaptcast.shared.video import read_frames


def test_fits_take_turns_and_one_that_cannot_start_in_time_is_skipped():
    async def scenario() -> list:
        scheduler = FitScheduler()

        async def fit(seconds: float) -> float:
            await asyncio.sleep(0.3)
            return seconds

        now = time.monotonic()
        return await asyncio.gather(
            scheduler.run(now + 1.0, fit),   # runs first, with about 1 s
            scheduler.run(now + 0.2, fit),   # its time is over when the device frees up
            scheduler.run(now + 1.0, fit),   # runs with what is left: about 0.7 s
        )

    first, skipped, third = asyncio.run(scenario())
    assert first > 0.9 and skipped is None and 0.5 < third < 0.75


def test_the_drain_rate_is_the_bytes_leaving_the_buffer_over_the_last_two_seconds():
    rate = DrainRate()
    rate.sample(100.0, 0)
    rate.sample(100.1, 500)
    assert rate.bytes_per_second() is None  # too short a span to say
    for step in range(1, 31):  # 5 kB/s for 3 s: the first second falls out of the window
        rate.sample(100.1 + step / 10, 500 + step * 500)
    assert abs(rate.bytes_per_second() - 5000) < 1
    rate.sample(103.15, 15_250)  # within 50 ms of the last sample: ignored
    rate.sample(104.15, 16_000)  # a stall: about a second with 500 bytes
    assert abs(rate.bytes_per_second() - (16_000 - 11_000) / (104.15 - 102.2)) < 1  # from the sample at 102.2


def _run_encoder(model_file, clip, mode: AdaptMode, frames: int, restart_at: int | None = None,
                 prepare: Callable[[CameraEncoder], None] = lambda encoder: None,
                 tools: CodingTools = CodingTools.none()) -> list:
    loaded = load_model_file(model_file)
    settings = EncoderSettings("cam", FrameSize(96, 64), 10.0, 3, mode=mode, adapt=True, fit_steps=2,
                               adapter_max_age_seconds=0.7, tools=tools)

    async def scenario() -> list:
        encoder = CameraEncoder(settings, loaded, torch.device("cpu"))
        prepare(encoder)
        out = []
        for i, rgb in enumerate(read_frames(clip, FrameSize(96, 64), max_frames=frames)):
            if i == restart_at:
                encoder.restart()
            out += await encoder.push(CapturedFrame(rgb, time.time()))
            await asyncio.sleep(0.05)  # frames arrive at a camera's pace, fits finish meanwhile
        await encoder.close()
        return out

    return asyncio.run(scenario())


def _check_versions_are_sent_before_use(records) -> list[int]:
    sent, used = set(), []
    for record in records:
        if isinstance(record, StreamHeader):
            sent = set()  # the receiver starts afresh
        elif isinstance(record, AdapterRecord):
            update = decode_update(record.update)
            assert update.parent == 0 or update.parent in sent, "an increment whose parent was not sent"
            sent.add(update.version)
        elif isinstance(record, SegmentStart):
            assert record.adapter_version == 0 or record.adapter_version in sent
            used.append(record.adapter_version)
    return used


def test_live_mode_sends_each_adapter_before_a_segment_uses_it(model_file, clip):
    out = _run_encoder(model_file, clip, AdaptMode.LIVE, 18)
    records = [o.record for o in out]
    assert isinstance(records[0], StreamHeader)
    assert sum(isinstance(r, FrameRecord) for r in records) == 18
    used = _check_versions_are_sent_before_use(records)
    assert used[0] == 0 and max(used) >= 2  # adapters were swapped in
    assert all(o.captured_at is not None and o.record.captured_us > 0 for o in out if isinstance(o.record, FrameRecord))


def test_a_restart_resends_the_header_and_a_snapshot(model_file, clip):
    out = _run_encoder(model_file, clip, AdaptMode.LIVE, 18, restart_at=13)
    records = [o.record for o in out]
    headers = [i for i, r in enumerate(records) if isinstance(r, StreamHeader)]
    assert len(headers) == 2
    after = records[headers[1]:]
    assert isinstance(after[1], (AdapterRecord, SegmentStart))  # the snapshot, or a base-model segment
    if isinstance(after[1], AdapterRecord):
        assert decode_update(after[1].update).parent == 0
    first_frame = next(r for r in after if isinstance(r, FrameRecord))
    assert first_frame.keyframe and first_frame.index == 13
    _check_versions_are_sent_before_use(records)


def test_with_the_tools_every_segment_after_the_first_background_starts_from_it(clip):
    """Backgrounds are coded beside the frames and go out before the segments that use them, again
    after a restart's header; a receiver decoding what was sent shows every frame. The bundled
    model, so that skips are decided as on a real camera."""
    tools = CodingTools(skip=True, background=BackgroundSettings(refine_steps=2))
    model_file = BUNDLED_DIR / f"{DEFAULT_MODEL}.safetensors"
    loaded = load_model_file(model_file)
    out = _run_encoder(model_file, clip, AdaptMode.LIVE, 24, restart_at=13, tools=tools)
    records = [o.record for o in out]
    backgrounds = [i for i, r in enumerate(records) if isinstance(r, BackgroundRecord)]
    headers = [i for i, r in enumerate(records) if isinstance(r, StreamHeader)]
    assert len(backgrounds) >= 2 and backgrounds[-1] == headers[1] + 1  # resent right after the new header
    starts = [r for r in records if isinstance(r, SegmentStart)]
    assert starts[0].background == 0 and all(s.background for s in starts[-3:])
    frames = [r for r in records if isinstance(r, FrameRecord)]
    assert sum(f.kind == FrameKind.INTRA for f in frames) == 1  # the first segment's, before any background
    assert any(f.kind == FrameKind.SKIP for f in frames)
    decoder, shown = None, 0
    for record in records:
        if isinstance(record, StreamHeader):
            decoder = StreamDecoder(record, loaded, torch.device("cpu"))
        else:
            shown += decoder.feed(record) is not None
    assert shown == 24


def test_segment_mode_codes_each_segment_with_its_own_adapter(model_file, clip):
    records = [o.record for o in _run_encoder(model_file, clip, AdaptMode.SEGMENT, 9)]
    used = _check_versions_are_sent_before_use(records)
    assert used == [1, 2, 3]


def test_when_fits_fail_the_previous_adapter_goes_on_then_the_base_model(model_file, clip):
    """The degradation ladder: adapted, then reused while it is young enough, then base."""
    encoders: list[CameraEncoder] = []

    def fail_after_the_first_fit(encoder: CameraEncoder) -> None:
        fit = encoder.adapter.fit
        calls = []

        def flaky(frames, served):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return fit(frames, served)

        encoder.adapter.fit = flaky
        encoders.append(encoder)

    out = _run_encoder(model_file, clip, AdaptMode.SEGMENT, 12, prepare=fail_after_the_first_fit)
    records = [o.record for o in out]
    # segments of 0.3 s, adapters trusted for 0.7 s: the fit of segment 0 codes segments 0-2
    assert _check_versions_are_sent_before_use(records) == [1, 1, 1, 0]
    encoder = encoders[0]
    assert encoder.segment_outcomes == {"adapted": 1, "reused": 2, "base": 1}
    assert encoder.counts["fit_failed"] == 3


def test_the_encoder_measures_what_the_adapter_buys(model_file, clip):
    encoders: list[CameraEncoder] = []
    _run_encoder(model_file, clip, AdaptMode.SEGMENT, 9, prepare=encoders.append)
    encoder = encoders[0]
    assert set(encoder.keyframe_psnr) == {"base", "adapted"}
    assert all(value > 0 for value in encoder.keyframe_psnr.values())
    assert encoder.bits_per_pixel > 0 and encoder.fit_steps > 0
    assert sum(encoder.fit_duration.counts) == 3 and encoder.fit_duration.total > 0
    assert encoder.fit_realtime_factor > 0


def test_the_shedder_gives_up_work_in_order_and_takes_it_back_slowly():
    shedder = LoadShedder()
    now = 0.0
    levels = []
    for _ in range(60):  # frames leave a second late, 10 a second
        now += 0.1
        shedder.observe(1.0, now)
        levels.append(shedder.level)
    assert levels[0] == 0 and sorted(levels) == levels and shedder.level == MAX_LEVEL
    assert not shedder.fits_allowed and not shedder.refinement and shedder.frame_stride == MAX_LEVEL - 1
    for _ in range(60):  # on time again: one rung back per five seconds, not at once
        now += 0.1
        shedder.observe(0.05, now)
    assert shedder.level == MAX_LEVEL - 1


def test_a_late_camera_sheds_fitting_then_frames_and_every_frame_still_decodes(clip):
    """Frames that arrive a second old (a busy machine) make the live encoder stop fitting and skip
    frames uncoded; what it sends still decodes, every frame, skipped ones included."""
    model_file = BUNDLED_DIR / f"{DEFAULT_MODEL}.safetensors"
    loaded = load_model_file(model_file)
    settings = EncoderSettings("cam", FrameSize(96, 64), 10.0, 3, mode=AdaptMode.LIVE, adapt=True, fit_steps=1,
                               tools=CodingTools(skip=False, background=BackgroundSettings(refine_steps=1)))

    async def scenario() -> tuple[CameraEncoder, list]:
        encoder = CameraEncoder(settings, loaded, torch.device("cpu"))
        out = []
        for rgb in read_frames(clip, FrameSize(96, 64), max_frames=60):
            out += await encoder.push(CapturedFrame(rgb, time.time() - 1.0))
            await asyncio.sleep(0.06)
        await encoder.close()
        return encoder, [o.record for o in out]

    encoder, records = asyncio.run(scenario())
    assert encoder.shedder.level >= 3 and encoder.counts["fit_shed"] > 0 and encoder.counts["frame_shed"] > 0
    assert encoder.frame_kinds["skip"] == encoder.counts["frame_shed"]  # the decision itself is off
    decoder = StreamDecoder(records[0], loaded, torch.device("cpu"))
    assert sum(decoder.feed(record) is not None for record in records[1:]) == 60


def test_refinement_steps_follow_the_measured_speed():
    budget = RefinementBudget(frame_seconds=0.05)
    assert budget.steps() == 0  # nothing measured yet
    budget.observe(0, 0.02)
    assert budget.steps() == 1  # a probe: what does a step cost?
    budget.observe(1, 0.03)
    assert budget.steps() == 3  # 0.03 s to spare, 0.01 s a step
    for _ in range(10):
        budget.observe(0, 0.06)
    assert budget.steps() == 0  # a slower machine (or a loaded one): no room left
    lucky = RefinementBudget(0.05)
    lucky.observe(0, 0.04)  # the first frames are slow...
    lucky.observe(1, 0.02)  # ...so a refined one can come out faster than the base cost
    assert lucky.steps() == lucky.max_steps  # a step that measured free, not a division by zero
    fast = RefinementBudget(1.0, base_seconds=0.01, step_seconds=0.001)
    assert [fast.steps() for _ in range(50)].count(0) == 1  # one frame in 50 re-measures the base cost
    assert max(fast.steps() for _ in range(5)) == fast.max_steps
