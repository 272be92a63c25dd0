"""A camera's session at the receiver under overload: late frames are archived, not decoded,
and the stream resumes at the next segment without an error."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import torch

from adaptcast.receiver.live import LiveView
from adaptcast.receiver.session import LATE_SECONDS, CameraSession
from adaptcast.receiver.workers import DecodePool
from adaptcast.shared.codec.bitstream import FrameRecord, Record, SegmentStart, pack_record, read_records
from adaptcast.shared.codec.modelfile import load_model_file
from adaptcast.shared.config import StreamLimits
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import encode_file
from adaptcast.shared.wire.framing import encode_record


@pytest.fixture(scope="module")
def records(clip, model_file, tmp_path_factory) -> list[Record]:
    """9 frames at 96x64 in segments of 3."""
    path = tmp_path_factory.mktemp("session") / "camera.acs"
    encode_file(clip, path, load_model_file(model_file), torch.device("cpu"), size=FrameSize(96, 64), fps=10.0,
                segment_frames=3, max_frames=9, progress=False)
    with open(path, "rb") as file:
        return list(read_records(file))


def test_an_overloaded_session_skips_a_late_segment_and_resumes_at_the_next(records, model_file):
    starts = [i for i, r in enumerate(records) if isinstance(r, SegmentStart)]

    async def scenario() -> CameraSession:
        pool = DecodePool(str(model_file), "cpu", workers=1)
        await pool.start()
        try:
            session = CameraSession(records[0].stream, pool, LiveView(), archive=None)
            now = time.time()
            for index, record in enumerate(records):
                # segment 0's frames, and segment 2's with the end record, waited too long: the receiver is behind
                late = starts[0] < index < starts[1] and isinstance(record, FrameRecord) or index > starts[2]
                session._queue.put_nowait((record, pack_record(record), now - 2 * LATE_SECONDS if late else now))
            deadline = time.monotonic() + 60
            while not session._queue.empty() or session.frames < 3:
                assert time.monotonic() < deadline, (session.frames, session.dropped)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the end record
            await session.close()
            return session
        finally:
            await pool.close()

    session = asyncio.run(scenario())
    assert session.dropped == {"late": 7}  # 6 frames and the end record, counted; no decode error
    assert session.frames == 3 and session.segments == 3


def test_a_stream_header_over_the_limits_is_refused_before_decoding(records, model_file):
    """A header claiming 8192x8192 (or 60 fps) under a 1920x1080, 30 fps cap goes to no worker, nor do the records
    of its stream; a header within the limits brings the camera back."""
    header = records[0]
    huge = dataclasses.replace(header, width=8192, height=8192)
    fast = dataclasses.replace(header, fps=60.0)
    starts = [i for i, r in enumerate(records) if isinstance(r, SegmentStart)]
    segment_1, segment_2 = records[starts[1]:starts[2]], records[starts[2]:starts[2] + 4]
    fed = [header, *records[1:starts[1]], huge, *segment_1, fast, header, *segment_2]

    async def scenario() -> CameraSession:
        pool = DecodePool(str(model_file), "cpu", workers=1)
        await pool.start()
        try:
            session = CameraSession(header.stream, pool, LiveView(), archive=None,
                                    limits=StreamLimits(max_size="1920x1080", max_fps=30))
            for record in fed:  # received "later": none counts as late on a slow machine
                session._queue.put_nowait((record, pack_record(record), time.time() + 3600))
            deadline = time.monotonic() + 60
            while not session._queue.empty() or session.frames < 6:
                assert time.monotonic() < deadline, (session.frames, session.dropped)
                await asyncio.sleep(0.05)
            # The worker was last given the header within the limits: the refused ones never reached it.
            assert pool._cameras[header.stream].history.replay()[0] == pack_record(header)
            await session.close()
            return session
        finally:
            await pool.close()

    session = asyncio.run(scenario())
    # the huge header and segment 1's four records, the fast header: counted, not decoded
    assert session.dropped == {"over_limits": 6}
    assert session.frames == 6 and session.segments == 2


def test_records_beyond_the_queue_byte_budget_are_dropped(records, model_file):
    """Five records of 300 KiB arrive at once under a 1 MiB budget: three wait for the decoder, two are dropped."""
    frame = next(record for record in records if isinstance(record, FrameRecord))
    big = [pack_record(dataclasses.replace(frame, index=i, string=bytes(300 << 10))) for i in range(5)]

    async def scenario() -> tuple[CameraSession, int]:
        pool = DecodePool(str(model_file), "cpu", workers=1)  # never started: nothing is decoded here
        session = CameraSession(records[0].stream, pool, LiveView(), archive=None,
                                limits=StreamLimits(queue_bytes=1 << 20))
        for sequence, packed in enumerate(big):  # all at once, before the decode task runs
            for message in encode_record(sequence, 0, sequence, packed):
                session._on_message(message)
        queued = session._queue.qsize()
        await session.close()
        await pool.close()
        return session, queued

    session, queued = asyncio.run(scenario())
    assert queued == 3 and session.dropped == {"queue_full": 2}
