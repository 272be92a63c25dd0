"""The receiver's decode pool: real worker processes decoding real streams, killed on purpose."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptcast.receiver.workers import HANG_TIMEOUT_SECONDS, MAX_IN_FLIGHT, DecodePool, DecodeResult, WorkerStartError
from adaptcast.shared.adapters.fitting import FitBudget
from adaptcast.shared.codec.bitstream import (
    FrameKind,
    FrameRecord,
    Record,
    SegmentStart,
    StreamHeader,
    pack_record,
    read_records,
)
from adaptcast.shared.codec.modelfile import load_model_file
from adaptcast.shared.device import usable_cores
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import AdaptOptions, encode_file
from adaptcast.shared.pipeline.streamdecoder import StreamDecoder

QUARANTINE = 1.0
"""A blamed camera's first quarantine in these tests (seconds)."""


def _encode(clip: Path, model_file: Path, path: Path, size: FrameSize, segment_frames: int, frames: int,
            adapt: AdaptOptions | None = None) -> list[Record]:
    encode_file(clip, path, load_model_file(model_file), torch.device("cpu"), size=size, fps=10.0,
                segment_frames=segment_frames, max_frames=frames, adapt=adapt, progress=False)
    with open(path, "rb") as file:
        return list(read_records(file))


def _decode_in_process(records: list[Record], model_file: Path) -> list[np.ndarray | None]:
    """What each record gives when decoded here: the frames the pool must reproduce exactly."""
    decoder = StreamDecoder(records[0], load_model_file(model_file), torch.device("cpu"))
    return [None] + [decoder.feed(record) for record in records[1:]]


def _assert_decoded(results: list[DecodeResult], expected: list[np.ndarray | None]) -> None:
    assert len(results) == len(expected)
    for result, frame in zip(results, expected):
        assert result.error is None, result.error
        if frame is None:
            assert result.frame is None
        else:
            np.testing.assert_array_equal(result.frame, frame)


def _assert_gone(pids: list[int]) -> None:
    assert not multiprocessing.active_children()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture(scope="module")
def streams(clip: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Record]]:
    """Two cameras: 9 frames at 96x64 in segments of 3, and 8 frames at 64x48 in segments of 4."""
    folder = tmp_path_factory.mktemp("workers")
    return {
        "gate": _encode(clip, model_file, folder / "gate.acs", FrameSize(96, 64), 3, 9),
        "yard": _encode(clip, model_file, folder / "yard.acs", FrameSize(64, 48), 4, 8),
    }


def test_pool_matches_in_process_decoding_and_survives_a_killed_worker(streams, model_file):
    gate, yard = streams["gate"], streams["yard"]
    expected_gate, expected_yard = _decode_in_process(gate, model_file), _decode_in_process(yard, model_file)
    # gate: header, then (segment, 3 frames) at 1, 5 and 9, end at 13.
    assert [type(record).__name__ for record in gate[5:10:4]] == ["SegmentStart", "SegmentStart"]

    async def scenario() -> None:
        pool = DecodePool(str(model_file), "cpu", workers=2, quarantine_seconds=QUARANTINE)
        await pool.start()
        pids = [worker.pid for worker in pool.stats().workers]
        # the usable cores shared out, as each worker process reports it runs
        assert [worker.threads for worker in pool.stats().workers] == [max(1, usable_cores() // 2)] * 2
        try:
            pool.assign("gate")
            pool.assign("yard")
            assert pool.stats().cameras == {"gate": 0, "yard": 1}

            # Many requests of one camera at once: at most MAX_IN_FLIGHT go out, all in order.
            yard_tasks = [asyncio.create_task(pool.feed("yard", pack_record(r))) for r in yard[:6]]
            await asyncio.sleep(0)
            assert pool.stats().workers[1].in_flight == MAX_IN_FLIGHT
            gate_results = [await pool.feed("gate", pack_record(r)) for r in gate[:7]]
            _assert_decoded(await asyncio.gather(*yard_tasks), expected_yard[:6])
            _assert_decoded(gate_results, expected_gate[:7])

            # Freeze gate's worker with two requests (frames 4 and 5) sent to it, then kill it: both fail.
            os.kill(pids[0], signal.SIGSTOP)
            stuck = [asyncio.create_task(pool.feed("gate", pack_record(r))) for r in gate[7:9]]
            await asyncio.sleep(0.2)
            os.kill(pids[0], signal.SIGKILL)
            for result in await asyncio.gather(*stuck):
                assert (result.error, result.reason, result.frame) == ("worker crashed", "worker_crashed", None)

            # The other worker's camera carries on, unchanged; the spare took the dead one's place at once.
            _assert_decoded([await pool.feed("yard", pack_record(r)) for r in yard[6:]], expected_yard[6:])
            workers = pool.stats().workers
            assert workers[0].restarts == 1 and workers[0].pid not in pids and workers[0].running
            assert workers[1].restarts == 0 and workers[1].pid == pids[1]
            pids.append(workers[0].pid)

            # Gate's record was the one in flight: gate is quarantined, its records go to no worker.
            assert pool.stats().quarantined == {"gate": 1, "yard": 0}
            lost = await pool.feed("gate", pack_record(gate[9]))
            assert (lost.reason, lost.frame) == ("quarantined", None)

            # After it, the new process holds gate's stream header: its next segment (2, frames 6..8)
            # then the end decode as here.
            await asyncio.sleep(QUARANTINE)
            again = [await pool.feed("gate", pack_record(r)) for r in gate[9:]]
            _assert_decoded(again, expected_gate[9:])
            assert sum(result.frame is not None for result in again) == 3
        finally:
            await pool.close()
        _assert_gone(pids)

    asyncio.run(scenario())


def test_corrupted_records_give_error_results(streams, model_file):
    gate = streams["gate"]
    expected = _decode_in_process(gate, model_file)
    frame = gate[3]
    assert isinstance(frame, FrameRecord) and not frame.keyframe
    noise = random.Random(7).randbytes(len(frame.string))
    garbage = pack_record(dataclasses.replace(frame, string=noise))  # a valid CRC: it reaches the rANS decoder
    torn = bytearray(pack_record(gate[3]))
    torn[-1] ^= 0xFF  # the CRC catches this one before any decoding
    foreign = dataclasses.replace(gate[0], model_sha256="0" * 64)

    async def scenario() -> None:
        pool = DecodePool(str(model_file), "cpu", workers=1, threads_per_worker=1)
        await pool.start()
        pid = pool.stats().workers[0].pid
        assert pool.stats().workers[0].threads == 1
        try:
            pool.assign("gate")
            _assert_decoded([await pool.feed("gate", pack_record(r)) for r in gate[:3]], expected[:3])
            torn_result = await pool.feed("gate", bytes(torn))
            assert torn_result.reason == "bad_record" and "checksum" in torn_result.error
            assert not torn_result.resynced
            broken = await pool.feed("gate", garbage)
            assert broken.reason == "decode" and broken.resynced and broken.frame is None
            skipped = await pool.feed("gate", pack_record(gate[4]))  # the rest of the segment is given up
            assert skipped.error is None and skipped.frame is None
            _assert_decoded([await pool.feed("gate", pack_record(r)) for r in gate[5:]], expected[5:])

            # A header of a model the station has nowhere is refused; the camera then has no decoder.
            assert isinstance(foreign, StreamHeader)
            refused = await pool.feed("gate", pack_record(foreign))
            assert refused.reason == "wrong_model" and "no model has sha256 0000" in refused.error
            orphan = await pool.feed("gate", pack_record(SegmentStart(0, 0, 3)))
            assert (orphan.error, orphan.reason) == ("no stream header yet", "no_header")
            assert pool.stats().restarts == 0
        finally:
            await pool.close()
        closed = await pool.feed("gate", pack_record(gate[0]))
        assert (closed.error, closed.reason) == ("decode pool closed", "closed")
        _assert_gone([pid])

    asyncio.run(scenario())


def test_adapted_segments_report_their_version_snapshot_and_timings(clip, model_file, tmp_path):
    """The archive needs each segment's adapter as a snapshot, and only the worker holds the adapters;
    the receiver's metrics need the decode and adapter swap times, which only the worker can measure."""
    adapt = AdaptOptions(budget=FitBudget(steps=2, lr=1e-2, crop=64))
    records = _encode(clip, model_file, tmp_path / "dock.acs", FrameSize(64, 64), 3, 6, adapt)
    expected = _decode_in_process(records, model_file)
    reference = StreamDecoder(records[0], load_model_file(model_file), torch.device("cpu"))
    snapshots = {}
    for record in records[1:]:
        reference.feed(record)
        if isinstance(record, SegmentStart):
            snapshots[record.index] = reference.store.snapshot(record.adapter_version)
    last = [r for r in records if isinstance(r, SegmentStart)][-1]
    assert (last.index, last.first_frame, last.adapter_version) == (1, 3, 2)
    kept = dataclasses.replace(last, index=2, first_frame=6)  # instead of the end: keeps the adapter

    async def scenario() -> None:
        pool = DecodePool(str(model_file), "cpu", workers=1)
        await pool.start()
        try:
            pool.assign("dock")
            results = [await pool.feed("dock", pack_record(r)) for r in records[:-1]]
            kept_result = await pool.feed("dock", pack_record(kept))
        finally:
            await pool.close()
        _assert_decoded(results, expected[:-1])
        decoded = [(r, result) for r, result in zip(records, results) if isinstance(r, SegmentStart)]
        assert [r.adapter_version for r, _ in decoded] == [1, 2]
        for record, result in decoded:
            assert result.adapter_version == record.adapter_version and result.fallback_segments == 0
            assert result.adapter_snapshot is not None and result.adapter_snapshot == snapshots[record.index]
            assert result.swap_seconds is not None and result.swap_seconds > 0  # 0 -> 1, then 1 -> 2
        others = [result for r, result in zip(records, results) if not isinstance(r, SegmentStart)]
        assert all(result.adapter_snapshot is None and result.swap_seconds is None for result in others)
        assert all((result.decode_seconds is not None and result.decode_seconds > 0) == (result.frame is not None)
                   for result in results)
        assert sum(result.frame is not None for result in results) == 6
        assert kept_result.error is None and kept_result.adapter_version == 2 and kept_result.swap_seconds is None

    asyncio.run(scenario())


def test_a_hung_worker_is_killed_and_restarted_and_an_idle_one_is_not(streams, model_file, caplog):
    hang_timeout = 1.0
    gate, yard = streams["gate"], streams["yard"]
    expected_gate, expected_yard = _decode_in_process(gate, model_file), _decode_in_process(yard, model_file)
    assert isinstance(gate[5], SegmentStart)
    caplog.set_level(logging.WARNING, logger="adaptcast.receiver.workers")

    async def scenario() -> None:
        pool = DecodePool(str(model_file), "cpu", workers=2, hang_timeout=hang_timeout, quarantine_seconds=QUARANTINE)
        await pool.start()
        pids = [worker.pid for worker in pool.stats().workers]
        try:
            pool.assign("gate")
            pool.assign("yard")
            _assert_decoded([await pool.feed("gate", pack_record(r)) for r in gate[:3]], expected_gate[:3])
            _assert_decoded([await pool.feed("yard", pack_record(r)) for r in yard[:3]], expected_yard[:3])

            # Idle workers are left alone, however long they wait for work.
            await asyncio.sleep(3 * hang_timeout)
            workers = pool.stats().workers
            assert [w.pid for w in workers] == pids and [w.restarts for w in workers] == [0, 0]

            # Gate's worker stops answering: its two requests wait while yard's worker decodes.
            os.kill(pids[0], signal.SIGSTOP)
            stopped_at = time.monotonic()
            stuck = [asyncio.create_task(pool.feed("gate", pack_record(r))) for r in gate[3:5]]
            _assert_decoded([await pool.feed("yard", pack_record(r)) for r in yard[3:6]], expected_yard[3:6])
            assert not any(task.done() for task in stuck)

            # Past the timeout (and one watchdog look) it is killed; its requests fail as hung.
            for result in await asyncio.gather(*stuck):
                assert (result.error, result.reason, result.frame) == ("worker hung", "worker_hung", None)
            assert hang_timeout <= time.monotonic() - stopped_at < 1.25 * hang_timeout + 1.0
            _assert_decoded([await pool.feed("yard", pack_record(r)) for r in yard[6:]], expected_yard[6:])

            # Replaced like a crashed worker, gate quarantined; then gate decodes again from its next segment.
            workers = pool.stats().workers
            assert workers[0].restarts == 1 and workers[0].pid not in pids and workers[0].running
            assert workers[1].restarts == 0 and workers[1].pid == pids[1]
            pids.append(workers[0].pid)
            assert (await pool.feed("gate", pack_record(gate[5]))).reason == "quarantined"
            await asyncio.sleep(QUARANTINE)
            _assert_decoded([await pool.feed("gate", pack_record(r)) for r in gate[5:]], expected_gate[5:])
        finally:
            await pool.close()
        _assert_gone(pids)
        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        assert len(warnings) == 2 and warnings[0].startswith(f"decode worker 0 (pid {pids[0]}): hung"), warnings
        assert "its cameras (gate)" in warnings[0] and "camera gate is blamed" in warnings[0]
        assert warnings[1].startswith("camera gate: quarantined for 1 s (its record hung its decode worker")

    asyncio.run(scenario())


def test_a_worker_that_cannot_load_the_model_fails_start(tmp_path):
    async def scenario() -> None:
        pool = DecodePool(str(tmp_path / "missing.safetensors"), "cpu", workers=1)
        with pytest.raises(WorkerStartError, match="does not exist"):
            await pool.start()
        _assert_gone([])

    asyncio.run(scenario())


@pytest.mark.parametrize("attack", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_camera_whose_records_kill_or_hang_its_worker_is_quarantined_and_the_other_keeps_its_frames(
        streams, model_file, attack):
    """Two cameras on one decode worker, both at 10 fps for 30 s. Whenever one of gate's frames is the request in
    flight, the worker is killed (or stopped, and the watchdog kills it): as if the record crashed or hung it. Yard,
    the innocent camera, keeps at least 95% of its frames on time (the rest within a few seconds) and loses none;
    gate is quarantined at each offence."""
    gate, yard = streams["gate"], streams["yard"]
    expected_yard = _decode_in_process(yard, model_file)
    seconds, interval = 30.0, 0.1
    # A hang is told from a slow decode only after the hang timeout (a fresh process's first decodes take over a
    # second on a loaded machine): the innocent camera's frames wait that long, and are on time within it.
    hang_timeout = HANG_TIMEOUT_SECONDS if attack == signal.SIGKILL else 3.0
    on_time = 1.0 if attack == signal.SIGKILL else hang_timeout * 1.25 + 1.0
    delays: list[float] = []
    attacks = 0

    async def innocent(pool: DecodePool, turn: asyncio.Lock, start: float) -> None:
        due = start
        while due < start + seconds:
            for record, frame in zip(yard, expected_yard):
                if isinstance(record, FrameRecord):
                    due += interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                async with turn:
                    result = await pool.feed("yard", pack_record(record))
                assert result.error is None, result.error
                if frame is not None:
                    np.testing.assert_array_equal(result.frame, frame)
                    delays.append(time.monotonic() - due)

    async def offender(pool: DecodePool, turn: asyncio.Lock, start: float) -> None:
        nonlocal attacks
        due = start + 1.0
        while due < start + seconds:
            for record in gate:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += interval
                async with turn:  # yard's request, if any, is answered: gate's is the oldest in flight
                    while not (worker := pool.stats().workers[0]).running or worker.in_flight:
                        await asyncio.sleep(0.005)  # a new process still rebuilding the cameras' decoders
                    request = asyncio.create_task(pool.feed("gate", pack_record(record)))
                    await asyncio.sleep(0)  # sent to the worker, unless gate is quarantined (answered at once)
                    if isinstance(record, FrameRecord) and not request.done():
                        os.kill(worker.pid, attack)
                        attacks += 1
                await request

    async def scenario() -> dict:
        pool = DecodePool(str(model_file), "cpu", workers=1, threads_per_worker=1, hang_timeout=hang_timeout)
        await pool.start()
        try:
            pool.assign("gate")
            pool.assign("yard")
            turn = asyncio.Lock()
            start = time.monotonic()
            await asyncio.gather(innocent(pool, turn, start), offender(pool, turn, start))
            return pool.stats()
        finally:
            await pool.close()

    stats = asyncio.run(scenario())
    late = sorted(delay for delay in delays if delay > on_time)
    assert len(delays) >= seconds / interval - 1
    assert len(late) <= 0.05 * len(delays), late
    assert attacks >= 2 and stats.quarantined == {"gate": attacks, "yard": 0}
    assert stats.restarts == attacks
    _assert_gone([])


def test_a_record_that_needs_more_memory_than_the_limit_costs_that_record_not_the_worker(streams, model_file):
    """Under a 128 MiB address-space headroom, a 1920x1080 keyframe cannot be decoded: an allocation fails in the
    worker, which refuses that record and decodes the next camera's records, in the same process."""
    gate = streams["gate"]
    expected = _decode_in_process(gate, model_file)
    large = [dataclasses.replace(gate[0], stream="large", width=1920, height=1080), SegmentStart(0, 0, 1),
             FrameRecord(0, FrameKind.INTRA, 1088, 1920, 0, b"\xff" * 8 + random.Random(1).randbytes(4096))]
    unlimited = StreamDecoder(large[0], load_model_file(model_file), torch.device("cpu"))
    unlimited.feed(large[1])
    with pytest.raises(BitstreamError, match="checksum"):  # decoded in full without the limit: a wrong frame
        unlimited.feed(large[2])

    async def scenario() -> None:
        pool = DecodePool(str(model_file), "cpu", workers=1, threads_per_worker=1, memory_limit_bytes=128 << 20)
        await pool.start()
        pid = pool.stats().workers[0].pid
        try:
            pool.assign("large")
            pool.assign("gate")
            _assert_decoded([await pool.feed("gate", pack_record(record)) for record in gate[:5]], expected[:5])
            header, segment, frame = [await pool.feed("large", pack_record(record)) for record in large]
            assert header.error is None and segment.error is None
            # torch's allocation failures read "can't allocate memory" or "could not create a primitive" (oneDNN)
            assert frame.reason == "internal" and frame.resynced, frame.error
            _assert_decoded([await pool.feed("gate", pack_record(record)) for record in gate[5:]], expected[5:])
            assert pool.stats().workers[0].pid == pid and pool.stats().restarts == 0
        finally:
            await pool.close()
        _assert_gone([pid])

    asyncio.run(scenario())
