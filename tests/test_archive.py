"""The receiver's archive: one self-contained file per segment, retention, and export.

A real adapted stream goes through a live StreamDecoder and an ArchiveWriter side by side, as
the receiver runs them; the export must give exactly the frames the live decoder gave.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import shutil
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from adaptcast.receiver import archive as archive_module
from adaptcast.receiver.archive import FREE_CHECK_SECONDS, ArchiveWriter, archive_name, list_archive
from adaptcast.receiver.export import export_archive, parse_time
from adaptcast.shared.adapters.fitting import FitBudget, StreamAdapter
from adaptcast.shared.adapters.lora import AdapterSpec
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    FrameRecord,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    pack_record,
    read_records,
)
from adaptcast.shared.codec.framecodec import FrameEncoder
from adaptcast.shared.codec.modelfile import ModelLibrary, load_model_file
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.frames import FrameSize, to_tensor
from adaptcast.shared.pipeline.stream import AdaptOptions, decode_file, encode_file
from adaptcast.shared.pipeline.streamdecoder import StreamDecoder
from adaptcast.shared.video import VideoWriter, read_frames
from tests.conftest import run_cli

CPU = torch.device("cpu")
CAMERA = "cam-1"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
SEGMENTS = 4


@pytest.fixture(scope="module")
def loaded(model_file):
    return load_model_file(model_file)


@pytest.fixture(scope="module")
def records(loaded, clip, tmp_path_factory):
    """An adapted stream of 4 segments of 3 frames at 96x64: header, (adapter, segment, frames)*, end."""
    path = tmp_path_factory.mktemp("archive-stream") / "adapted.acs"
    adapt = AdaptOptions(budget=FitBudget(steps=2, lr=1e-2, crop=64))  # lr: adapters that change the frames
    encode_file(clip, path, loaded, CPU, size=FrameSize(96, 64), fps=12.5, segment_frames=3, max_frames=3 * SEGMENTS,
                adapt=adapt, progress=False)
    with open(path, "rb") as file:
        return list(read_records(file))


def receive(records, loaded, root, start=T0, **limits):
    """Run the live decoder and the archive over `records`, one record a second from `start`.

    Returns the live frames and the (closed) writer.
    """
    live = StreamDecoder(records[0], loaded, CPU)
    writer = ArchiveWriter(root, CAMERA, limits.get("max_age_seconds", 1e9), limits.get("max_bytes", 1 << 30),
                           live.store.snapshot, max_file_bytes=limits.get("max_file_bytes", 1 << 30), min_free_bytes=0)
    frames = []
    for i, record in enumerate(records):
        if i:  # the decoder was made from the header
            rgb = live.feed(record)
            if rgb is not None:
                frames.append(rgb)
        writer.write(record, (start + timedelta(seconds=i)).timestamp())
    writer.close()
    return frames, writer


def eventually(condition, within=10.0):
    """Whether `condition()` holds within `within` seconds (the archive writes in its own thread)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def segment_times(records, start=T0):
    """When each segment start arrives in `receive`."""
    return [start + timedelta(seconds=i) for i, r in enumerate(records) if isinstance(r, SegmentStart)]


@pytest.fixture(scope="module")
def archived(records, loaded, tmp_path_factory):
    """The archive of one session and the frames the live decoder showed."""
    root = tmp_path_factory.mktemp("archive")
    frames, writer = receive(records, loaded, root)
    assert writer.stats().write_errors == 0 and len(frames) == 3 * SEGMENTS
    return root, frames


def exported(root, model_file, tmp_path, **kwargs):
    output = tmp_path / "export.y4m"
    report = export_archive(root, CAMERA, output, [model_file], CPU, **kwargs)
    return report, output


def assert_video_of(video, expected, fps=12.5):
    """`video` holds exactly `expected`: .y4m stores 4:4:4 YUV, so the frames read back are
    compared with the expected frames after the same round trip, and the files byte for byte."""
    reference = video.with_name(video.stem + "-expected.y4m")
    with VideoWriter(reference, fps, FrameSize(96, 64)) as writer:
        for rgb in expected:
            writer.write(rgb)
    actual, wanted = list(read_frames(video)), list(read_frames(reference))
    assert len(actual) == len(expected)
    for a, b in zip(actual, wanted):
        np.testing.assert_array_equal(a, b)
    assert video.read_bytes() == reference.read_bytes()


def test_one_self_contained_file_per_segment(archived, records, loaded, tmp_path):
    root, live = archived
    segments = [r for r in records if isinstance(r, SegmentStart)]
    assert all(s.adapter_version > 0 for s in segments), "the stream should be adapted"
    names = sorted(p.name for p in (root / CAMERA).iterdir())
    assert names == [archive_name(t, s.index) for t, s in zip(segment_times(records), segments)]
    assert names[0] == "20240501T080002.000000Z-s00000000.acs"
    for k, path in enumerate(sorted((root / CAMERA).iterdir())):
        with open(path, "rb") as file:
            kinds = [type(r) for r in read_records(file)]
        assert kinds[:3] == [StreamHeader, AdapterRecord, SegmentStart] and kinds.count(AdapterRecord) == 1
        output = tmp_path / f"{k}.y4m"
        # alone: the older files may be gone
        report = decode_file(path, output, ModelLibrary.holding(loaded), CPU, progress=False)
        assert report.fallback_segments == 0
        assert_video_of(output, live[3 * k : 3 * k + 3])
    base = tmp_path / "base.y4m"
    decode_file(path, base, ModelLibrary.holding(loaded), CPU, use_adapters=False, progress=False)
    assert base.read_bytes() != output.read_bytes(), "the snapshot (built from increments) must matter"


def test_export_gives_the_live_frames(archived, loaded, model_file, tmp_path):
    root, live = archived
    report, video = exported(root, model_file, tmp_path)
    assert (report.frames, report.files, report.fallback_segments, report.corrupt) == (3 * SEGMENTS, SEGMENTS, 0, [])
    assert_video_of(video, live)


def test_export_time_range_picks_files_by_start(archived, records, loaded, model_file, tmp_path):
    root, live = archived
    times = segment_times(records)
    report, video = exported(root, model_file, tmp_path, start=times[1], end=times[3])
    assert (report.files, report.first, report.last) == (2, times[1], times[2])
    assert_video_of(video, live[3:9])
    naive = parse_time(times[3].replace(tzinfo=None).isoformat())
    report, video = exported(root, model_file, tmp_path, start=naive)
    assert report.files == 1
    assert_video_of(video, live[9:])
    with pytest.raises(BitstreamError, match="no archived segments"):
        export_archive(root, CAMERA, tmp_path / "none.y4m", [model_file], CPU, start=times[-1] + timedelta(seconds=1))


def test_parse_time():
    assert parse_time("2024-05-01T08:00:07Z") == datetime(2024, 5, 1, 8, 0, 7, tzinfo=timezone.utc)
    assert parse_time("2024-05-01 08:00") == datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
    assert parse_time("2024-05-01T10:00:00+02:00") == datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_retention_by_size_keeps_the_newest_and_never_the_open_file(archived, records, loaded, tmp_path, caplog):
    root = tmp_path / "archive"
    live = StreamDecoder(records[0], loaded, CPU)
    # 1 byte: every closed file goes
    writer = ArchiveWriter(root, CAMERA, 1e9, 1, live.store.snapshot, max_file_bytes=1 << 30, min_free_bytes=0)
    second = [i for i, r in enumerate(records) if isinstance(r, SegmentStart)][1]
    for i, record in enumerate(records[: second + 3]):
        if i:
            live.feed(record)
        writer.write(record, (T0 + timedelta(seconds=i)).timestamp())
    partial = [archive_name(T0 + timedelta(seconds=second), 1) + ".partial"]
    assert eventually(lambda: [p.name for p in (root / CAMERA).iterdir()] == partial)  # written by its thread
    writer.close()
    assert list((root / CAMERA).iterdir()) == []

    caplog.set_level(logging.INFO, logger="adaptcast.receiver.archive")
    sizes = [f.path.stat().st_size for f in list_archive(archived[0], CAMERA)]
    root = tmp_path / "archive2"
    _, writer = receive(records, loaded, root, max_bytes=sizes[-2] + sizes[-1])
    counts = writer.stats()
    assert counts.write_errors == 0
    assert [f.segment for f in list_archive(root, CAMERA)] == [SEGMENTS - 2, SEGMENTS - 1]
    assert counts.deleted == {"size": SEGMENTS - 2}
    assert counts.stored_bytes == sizes[-2] + sizes[-1]
    assert any("retention deleted" in m and CAMERA in m for m in caplog.messages)


def test_retention_by_age_also_clears_crash_leftovers(records, loaded, tmp_path):
    root = tmp_path / "archive"
    (root / CAMERA).mkdir(parents=True)
    leftover = root / CAMERA / (archive_name(T0 - timedelta(days=1), 7) + ".partial")
    leftover.write_bytes(b"half a file")
    unrelated = root / CAMERA / "notes.txt"
    unrelated.write_text("not the archive's")
    _, writer = receive(records, loaded, root, max_age_seconds=6)
    assert writer.stats().write_errors == 0
    # The end record arrives 4 s after the last segment's start, 9 s after the one before it.
    assert [f.segment for f in list_archive(root, CAMERA, include_partial=True)] == [SEGMENTS - 1]
    assert unrelated.exists() and not leftover.exists()
    assert writer.stats().deleted == {"age": SEGMENTS}  # the leftover and every segment but the last


def test_corrupt_files_are_reported_and_the_others_export(archived, loaded, model_file, tmp_path, caplog):
    root, live = archived
    copy = tmp_path / "archive"
    shutil.copytree(root, copy)
    files = [f.path for f in list_archive(copy, CAMERA)]
    files[1].write_bytes(files[1].read_bytes()[:-20])  # cuts the end record and the last frame's tail
    data = bytearray(files[2].read_bytes())
    with open(files[2], "rb") as file:
        offset = 5
        for record in read_records(file):
            if isinstance(record, FrameRecord):
                break
            offset += len(pack_record(record))
    data[offset + 30] ^= 0xFF  # inside segment 2's first frame
    files[2].write_bytes(bytes(data))
    report, video = exported(copy, model_file, tmp_path)
    assert report.corrupt == [files[1].name, files[2].name] and report.files == SEGMENTS
    assert_video_of(video, live[0:5] + live[9:12])
    assert any(files[1].name in m and CAMERA in m for m in caplog.messages)


def test_a_new_session_of_the_same_stream_exports_after_the_first(records, loaded, model_file, tmp_path):
    root = tmp_path / "archive"
    first, _ = receive(records, loaded, root)
    second, _ = receive(records, loaded, root, start=T0 + timedelta(minutes=5))  # the sender restarted
    report, video = exported(root, model_file, tmp_path)
    assert (report.files, report.corrupt) == (2 * SEGMENTS, [])
    assert_video_of(video, first + second)


def test_records_before_a_segment_start_are_dropped(records, loaded, tmp_path, caplog):
    """A receiver that joins in the middle of segment 0 archives from segment 1 on."""
    root = tmp_path / "archive"
    late = [records[0]] + records[4:]  # header, then segment 0's last frames
    writer = ArchiveWriter(root, CAMERA, 1e9, 1 << 30, lambda version: None, max_file_bytes=1 << 30, min_free_bytes=0)
    for i, record in enumerate(late):
        writer.write(record, (T0 + timedelta(seconds=i)).timestamp())
    writer.close()
    assert [f.segment for f in list_archive(root, CAMERA)] == [1, 2, 3]
    assert sum("drops records" in m for m in caplog.messages) == 1
    before = next(i for i, r in enumerate(late) if isinstance(r, SegmentStart))
    assert writer.stats().dropped == {"no_start": sum(isinstance(r, FrameRecord) for r in late[:before])}


def test_disk_errors_are_counted_not_raised(archived, records, loaded, model_file, tmp_path):
    _, live = archived
    root = tmp_path / "blocked"
    root.mkdir()
    (root / CAMERA).write_text("a file where the camera's folder should be")
    _, writer = receive(records, loaded, root)
    assert writer.stats().write_errors == SEGMENTS

    # A full disk for one segment: that file is lost, the others are written; export resyncs.
    root = tmp_path / "full"
    (root / CAMERA).mkdir(parents=True)
    second = segment_times(records)[1]
    (root / CAMERA / (archive_name(second, 1) + ".partial")).symlink_to("/dev/full")
    _, writer = receive(records, loaded, root)
    assert writer.stats().write_errors == 1
    assert [f.segment for f in list_archive(root, CAMERA, include_partial=True)] == [0, 2, 3]
    report, video = exported(root, model_file, tmp_path)
    assert report.corrupt == []
    assert_video_of(video, live[0:3] + live[6:12])


def test_a_version_that_spans_files_is_taken_once(loaded, clip, model_file, tmp_path, capfd):
    """Segments that share an adapter version each carry its snapshot; the export's decoder,
    which already holds it, skips the repeats (the store would reject them as duplicates, a
    warning on the decoding child's stderr)."""
    size = FrameSize(96, 64)
    encoder = FrameEncoder(loaded.model, size, CPU)
    frames = list(read_frames(clip, size, 12.5, 6))
    adapter = StreamAdapter(CAMERA, encoder.model, loaded.info.sha256, AdapterSpec(), loaded.info.lambda_at(0.0),
                            FitBudget(steps=2, lr=1e-2, crop=64), snapshot_every=10)
    update, _ = adapter.fit([to_tensor(rgb, encoder.padded, CPU) for rgb in frames[:3]])
    encoder.weights = adapter.weights
    stream = [StreamHeader(loaded.info.sha256, loaded.info.name, 96, 64, 12.5, 3, CAMERA), AdapterRecord(update)]
    for segment in range(2):
        stream.append(SegmentStart(segment, 3 * segment, 3, adapter.version))
        stream += [encoder.encode(frames[i], i, keyframe=i % 3 == 0)[0] for i in range(3 * segment, 3 * segment + 3)]
    stream.append(StreamEnd(6, 2))
    live, _ = receive(stream, loaded, tmp_path / "archive")
    report, video = exported(tmp_path / "archive", model_file, tmp_path)
    assert (report.frames, report.fallback_segments) == (6, 0)
    assert "duplicate" not in capfd.readouterr().err
    assert_video_of(video, live)


def test_a_changed_stream_header_ends_the_export_keeping_what_came_before(records, loaded, model_file, tmp_path):
    root = tmp_path / "archive"
    first, _ = receive(records, loaded, root)
    changed = [dataclasses.replace(records[0], fps=25.0)] + records[1:]
    receive(changed, loaded, root, start=T0 + timedelta(minutes=5))
    name = list_archive(root, CAMERA)[SEGMENTS].path.name
    output = tmp_path / "export.y4m"
    with pytest.raises(BitstreamError, match=f"changed at {name}.*25 fps"):
        export_archive(root, CAMERA, output, [model_file], CPU)
    assert_video_of(output, first)


def _state(pid):
    """A process's state letter (Z: dead, not reaped; T: stopped); "gone" once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["crash", "hang"])
def test_a_file_that_kills_or_hangs_the_decoder_costs_that_file_alone(archived, model_file, tmp_path, caplog, signum):
    """The export decodes in a child process. When the second file goes to it, the child is
    killed (as a segfault in CompressAI on a poisoned file would kill it) or stopped (as a decode
    looping on one would hang it): that file is reported, one line logged, and a new child takes
    the next file with a fresh decoder; the other files' frames are the live ones."""
    root, live = archived
    names = [f.path.name for f in list_archive(root, CAMERA)]
    pids = {}

    def poison(name, pid):
        pids[name] = pid
        if name == names[1]:
            os.kill(pid, signum)
            assert eventually(lambda: _state(pid) in ("Z", "T", "gone"))  # it landed before the file is sent

    report, video = exported(root, model_file, tmp_path, on_file=poison, hang_timeout=5.0)
    assert (report.corrupt, report.files, report.frames) == ([names[1]], SEGMENTS, 9)
    assert_video_of(video, live[0:3] + live[6:12])
    assert pids[names[0]] == pids[names[1]] != pids[names[2]] == pids[names[3]]
    lines = [m for m in caplog.messages if names[1] in m]
    assert len(lines) == 1 and CAMERA in lines[0], lines
    assert ("crashed on it" if signum == signal.SIGKILL else "hung on it") in lines[0], lines
    assert all(_state(pid) == "gone" for pid in pids.values())  # killed and reaped, the last one closed


def test_the_export_command_logs_its_decoder_and_names_damaged_files(archived, model_file, tmp_path):
    root, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(root, copy)
    files = [f.path for f in list_archive(copy, CAMERA)]
    files[2].write_bytes(files[2].read_bytes()[:-20])
    done = run_cli("export", "--archive", str(copy), "--camera", CAMERA, "-o", str(tmp_path / "out.y4m"),
                   "--model", str(model_file), "--device", "cpu", "--memory-mb", "2048", threads=1)
    assert done.returncode == 0, done.stderr
    assert f"damaged file skipped: {files[2].name}" in done.stderr
    progress = re.findall(r"camera (\S+): decoding (\S+) \(decoder pid (\d+)\)", done.stderr)
    assert [(c, n) for c, n, _ in progress] == [(CAMERA, f.name) for f in files] and len({p for *_, p in progress}) == 1
    assert done.stdout.startswith(f"{3 * SEGMENTS - 1} frames from {SEGMENTS} files")


def frames_in(path):
    with open(path, "rb") as file:
        return sum(isinstance(r, FrameRecord) for r in read_records(file))


def test_a_file_ends_at_max_file_bytes_and_still_decodes(archived, records, loaded, model_file, tmp_path, caplog):
    """A segment that would pass the cap ends early (a file cannot start mid-segment: its
    P-frames need the frames before them); what was written exports as the live view showed it,
    and the next segment starts a file of its own."""
    root, live = archived
    sizes = [f.path.stat().st_size for f in list_archive(root, CAMERA)]
    cap = max(sizes) - 1  # the largest file loses at least its last frame
    _, writer = receive(records, loaded, tmp_path / "capped", max_file_bytes=cap)
    files = list_archive(tmp_path / "capped", CAMERA)
    kept = [frames_in(f.path) for f in files]
    assert len(files) == SEGMENTS and all(f.path.stat().st_size <= cap for f in files)
    counts = writer.stats()
    assert counts.dropped == {"file_cap": 3 * SEGMENTS - sum(kept)} and counts.dropped["file_cap"] >= 1
    assert counts.write_errors == 0
    assert any("reached max_file_bytes" in m and CAMERA in m for m in caplog.messages)
    report, video = exported(tmp_path / "capped", model_file, tmp_path)
    assert report.corrupt == []
    assert_video_of(video, [rgb for segment, n in enumerate(kept) for rgb in live[3 * segment: 3 * segment + n]])


def test_below_the_free_space_floor_recording_pauses_and_resumes(archived, records, loaded, model_file, tmp_path,
                                                                  caplog):
    """A floor above the disk's free space stops recording at the next segment start (counted,
    flagged, one log line); lowering it stands for space coming back, measured again at most
    every FREE_CHECK_SECONDS of receive time (here one record a second)."""
    caplog.set_level(logging.INFO, logger="adaptcast.receiver.archive")
    _, live_frames = archived
    root = tmp_path / "archive"
    live = StreamDecoder(records[0], loaded, CPU)
    floor = shutil.disk_usage(tmp_path).free + 2**40
    writer = ArchiveWriter(root, CAMERA, 1e9, 1 << 30, live.store.snapshot, max_file_bytes=1 << 30,
                           min_free_bytes=floor)
    starts = [i for i, r in enumerate(records) if isinstance(r, SegmentStart)]
    assert starts[2] - starts[0] >= 2 * FREE_CHECK_SECONDS  # the second start measures again
    paused = []
    for i, record in enumerate(records):
        if i:
            live.feed(record)
        if i == starts[2]:  # the first two segments went by while the disk was "full"
            assert eventually(lambda: writer.stats().dropped == {"disk_low": 2 * 4})  # 2 x (start + 3 frames)
            paused.append(writer.stats().paused)
            writer.min_free_bytes = 0
        writer.write(record, (T0 + timedelta(seconds=i)).timestamp())
    writer.close()
    assert paused == [True] and not writer.stats().paused
    assert [f.segment for f in list_archive(root, CAMERA, include_partial=True)] == [2, 3]
    assert sum("archive paused" in m and "below min_free_bytes" in m for m in caplog.messages) == 1
    assert sum("archive resumed" in m for m in caplog.messages) == 1
    report, video = exported(root, model_file, tmp_path)
    assert_video_of(video, live_frames[6:12])


def test_a_stalled_disk_never_blocks_the_caller_and_a_full_queue_drops(records, loaded, tmp_path, monkeypatch):
    """The first file is a FIFO nobody reads: opening it blocks, as a hung disk would. Every
    `write` still returns at once (the event loop's calls), because the disk work runs in the
    writer's thread; once its queue is full the rest of each segment is counted, not queued."""
    monkeypatch.setattr(archive_module, "QUEUE_RECORDS", 4)
    root = tmp_path / "archive"
    (root / CAMERA).mkdir(parents=True)
    fifo = root / CAMERA / (archive_name(segment_times(records)[0], 0) + ".partial")
    os.mkfifo(fifo)
    writer = ArchiveWriter(root, CAMERA, 1e9, 1 << 30, lambda version: None, max_file_bytes=1 << 30,
                           min_free_bytes=0)
    caller = threading.Thread(target=lambda: [writer.write(r, (T0 + timedelta(seconds=i)).timestamp())
                                              for i, r in enumerate(records)])
    caller.start()
    caller.join(timeout=30)
    stalled = caller.is_alive()
    with open(fifo, "rb") as reader:  # the disk comes back (and the test never hangs)
        data = reader.read()
    caller.join()
    writer.close()
    assert not stalled, "write() waited for the disk"
    # segment 0 was queued before the queue filled, and reached the disk once it came back
    assert sum(isinstance(r, FrameRecord) for r in read_records(io.BytesIO(data))) == 3
    second = [i for i, r in enumerate(records) if isinstance(r, SegmentStart)][1]
    later = [r for r in records[second:] if isinstance(r, (SegmentStart, FrameRecord))]
    assert writer.stats().dropped == {"queue_full": len(later)}
