"""A camera's session at the receiver under overload: late frames are archived, not decoded,
and the stream resumes at the next segment without an error."""

from __future__ import annotations

import asyncio
import time

import torch

from receiver.live import LiveView
from receiver.session import LATE_SECONDS, CameraSession
from receiver.workers import DecodePool
from shared.codec.bitstream import FrameRecord, SegmentStart, pack_record, read_records
from shared.codec.modelfile import load_model_file
from shared.codec.stream import encode_file
from shared.frames import FrameSize


def test_an_overloaded_session_skips_a_late_segment_and_resumes_at_the_next(clip, model_file, tmp_path):
    path = tmp_path / "camera.acs"
    encode_file(clip, path, load_model_file(model_file), FrameSize(96, 64), 10.0, 3, 9, torch.device("cpu"),
                progress=False)
    with open(path, "rb") as file:
        records = list(read_records(file))
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
