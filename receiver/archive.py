"""The archive of a camera's received bitstream: one self-contained .acs file per segment.

Archiving the bitstream rather than decoded video keeps the archive compact and exact: an
export decodes the same records with the same decoder as the live view, so it shows the same
frames. Every file is a whole stream (header, adapter snapshot, the background picture its
segment starts from, one segment, end record), so retention can delete any older file and the
rest still decode: no file depends on another, so no background a kept segment needs can be
deleted. A background is a few kilobytes and is repeated in each file that needs it; a
segment of a static camera is often smaller (docs/streaming.md has the figures). Files are named by the UTC
time their segment started to arrive, which is what retention and export filter on:

    <root>/<camera>/<%Y%m%dT%H%M%S.%fZ>-s<segment index:08d>.acs

The disk is never waited for on the event loop: each camera's writer hands its files' opening,
records, syncing, renaming and retention to a thread of its own through a bounded queue, so a
slow or stalled disk delays the archive (and, past the queue, loses the rest of a segment,
counted) but not the live view, the signaling or the other cameras. A sender cannot fill the
disk either: a file stops at `max_file_bytes` (the rest of its segment is not archived: a file
that started mid-segment could not decode), and below `min_free_bytes` of free space no new file
is started until space is back.
"""

from __future__ import annotations

import bisect
import logging
import os
import queue
import re
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from adaptcast.receiver.stats import ArchiveDropReason, ArchiveStats, DeleteReason
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameRecord,
    Record,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    StreamWriter,
    pack_record,
)
from adaptcast.shared.codec.framecodec import MAX_BACKGROUNDS

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
PARTIAL_SUFFIX = ".partial"
QUEUE_RECORDS = 500
"""Records waiting for a camera's disk thread (50 s of a 10 fps camera): past it the rest of the
segment is not archived (counted: queue_full), rather than the event loop waiting for the disk."""
FREE_CHECK_SECONDS = 5.0
"""The free space is measured when a file starts, at most this often (by receive time)."""
_END_BYTES = len(pack_record(StreamEnd(0, 0)))
"""What a file's end record takes: room kept for it under `max_file_bytes`."""
_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)-s(\d{8,})\.acs(\.partial)?$")


@dataclass(frozen=True)
class ArchiveFile:
    """One file of a camera's archive, as its name describes it."""

    path: Path
    start: datetime
    """UTC time the segment started to arrive."""
    segment: int
    """The segment's index in its stream."""


def camera_directory(root: Path, camera: str) -> Path:
    """The camera's folder; a name that would leave `root` is refused (names come from senders)."""
    if not camera or camera in (".", "..") or "/" in camera or "\\" in camera or "\0" in camera:
        raise ValueError(f"camera name {camera!r} cannot be a folder name")
    return Path(root) / camera


def archive_name(start: datetime, segment: int) -> str:
    return f"{start.astimezone(timezone.utc).strftime(TIME_FORMAT)}-s{segment:08d}.acs"


def list_archive(root: Path, camera: str, include_partial: bool = False) -> list[ArchiveFile]:
    """The camera's archive files in time order (segment index breaks ties); none if no folder.

    `include_partial` adds the `.partial` files: the one being written, and any a crash left
    behind. Names that do not follow the scheme are not the archive's and are left alone.
    """
    directory = camera_directory(root, camera)
    if not directory.is_dir():
        return []
    files = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match is None or (match[3] and not include_partial):
            continue
        try:
            start = datetime.strptime(match[1], TIME_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:  # digits in the right places, but no date
            continue
        files.append(ArchiveFile(path, start, int(match[2])))
    return sorted(files, key=lambda f: (f.start, f.segment))


@dataclass
class _Output:
    """A segment's `.partial` file, open, and the writer appending records to it."""

    handle: BinaryIO
    writer: StreamWriter


@dataclass
class _OpenFile:
    """The file of the segment being received."""

    path: Path
    """Its final name; it is written under this name plus `.partial`."""
    start: datetime
    segment: SegmentStart
    next_frame: int
    """The index after the last frame written: the end record's frame count."""
    output: _Output | None = None
    """The file while records are written to it; None when the rest of the segment is not written:
    it was skipped (see `skipped`), a disk error gave it up, or it has ended."""
    skipped: ArchiveDropReason | None = None
    """Why the rest of the segment is not written (disk_low, file_cap): counted, not an error."""

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL_SUFFIX)


class ArchiveWriter:
    """Writes one camera's received records to its archive, a file per segment.

    Give it every record in the order received, after the live decoder has taken it:
    `snapshot_for(v)` (the receiver's `AdapterStore.snapshot`) is asked at each segment start
    for the adapter version the segment was coded with, so that the file carries the whole
    adapter as one snapshot. Incoming AdapterRecords are not written: they are mostly increments
    on versions in earlier files, which retention may delete, and the snapshot stands for them.
    A version the store does not hold (lost or rejected) gets no snapshot, so the archived
    segment falls back to the base model exactly as the live view did.

    `write` never blocks and never raises: the disk work runs in the writer's thread (see the
    module), and the live path must go on when a disk is full. A disk error is logged once per
    file and counted in `write_errors`, and the rest of that segment is not archived. `close`
    waits for the thread; call it off the event loop.
    """

    def __init__(self, root: Path, camera: str, max_age_seconds: float, max_bytes: int,
                 snapshot_for: Callable[[int], bytes | None], *, max_file_bytes: int, min_free_bytes: int) -> None:
        self.root = Path(root)
        self.camera = camera
        self.directory = camera_directory(self.root, camera)
        self.max_age_seconds = max_age_seconds
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.min_free_bytes = min_free_bytes
        self.snapshot_for = snapshot_for
        self._lock = threading.Lock()
        """Guards the figures below, which both threads update and metrics read."""
        self._write_errors = 0
        self._deleted: Counter[DeleteReason] = Counter()
        self._dropped: Counter[ArchiveDropReason] = Counter()
        self._stored_bytes: int | None = None
        self._paused = False
        # Event loop side: what the stream has said so far, and whether the disk thread has a file open.
        self._header: StreamHeader | None = None
        """The stream header last received; every file starts with it."""
        self._backgrounds: dict[int, BackgroundRecord] = {}
        """The stream's latest background pictures by index: a file carries the one its segment
        names."""
        self._started = False
        """The disk thread was told to start a file for the current segment."""
        self._overflow = False
        """The queue was full during this segment: the rest of it is not handed over."""
        self._behind = False
        """The queue has been full since the last segment start that found room (logged once)."""
        self._received_at = 0.0
        """The latest receive time, handed to the disk thread with each file's end."""
        self._drop_logged = False
        # Disk thread side.
        self._file: _OpenFile | None = None
        self._now = 0.0
        """The latest receive time the disk thread was given: retention measures ages from it."""
        self._free_checked_at: float | None = None
        self._files: list[tuple[ArchiveFile, int]] | None = None
        """The archive's files and sizes, oldest first (read from the folder at the first
        retention, then kept up to date); the file being written is not in it."""
        self._jobs: queue.Queue[tuple[Callable[..., None], tuple] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"archive-{camera}", daemon=True)
        self._thread.start()

    def write(self, record: Record, received_at: float) -> None:
        """Archive one received record; `received_at` is its arrival time (Unix seconds)."""
        self._received_at = max(self._received_at, received_at)
        if isinstance(record, StreamHeader):
            self._finish()
            self._header = record
            self._backgrounds = {}
        elif isinstance(record, BackgroundRecord):
            self._backgrounds[record.index] = record
            for old in sorted(self._backgrounds)[:-MAX_BACKGROUNDS]:
                del self._backgrounds[old]
        elif isinstance(record, SegmentStart):
            self._finish()
            if self._header is None:
                self._drop()
            elif self._room():
                if self._behind:
                    log.info("camera %s: the archive's disk has caught up", self.camera)
                self._started, self._drop_logged, self._behind = True, False, False
                self._submit(self._start, record, self._opening(self._header, record), received_at)
        elif isinstance(record, FrameRecord):
            if self._overflow:
                self._count("queue_full")
            elif not self._started:
                self._drop()
            elif self._room():
                self._submit(self._append, record, received_at)
        elif isinstance(record, StreamEnd):
            self._finish()
        # AdapterRecord: the snapshot at the start of each file stands for it (see the class).

    def close(self) -> None:
        """Complete the file being written (the stream ended or the session closed) and stop the
        disk thread, waiting for it."""
        self._finish()
        self._jobs.put(None)
        self._thread.join()

    def stats(self) -> ArchiveStats:
        with self._lock:
            return ArchiveStats(self._stored_bytes, self._write_errors, dict(self._deleted), dict(self._dropped),
                                self._paused)

    # -- event loop side --------------------------------------------------------------------

    def _opening(self, header: StreamHeader, segment: SegmentStart) -> list[Record]:
        """The records a segment's file starts with, so that it decodes alone."""
        records: list[Record] = [header]
        snapshot = self.snapshot_for(segment.adapter_version) if segment.adapter_version else None
        if snapshot is not None:
            records.append(AdapterRecord(snapshot))
        background = self._backgrounds.get(segment.background)
        if background is not None:  # missing: the live view could not show the segment either
            records.append(background)
        return [*records, segment]

    def _room(self) -> bool:
        """Whether the disk thread's queue takes another record; counted when it does not."""
        if self._jobs.qsize() < QUEUE_RECORDS:
            return True
        if not self._behind:
            log.warning("camera %s: the archive's disk is %d records behind; segments are not archived until it "
                        "catches up", self.camera, QUEUE_RECORDS)
        self._overflow = self._behind = True
        self._count("queue_full")
        return False

    def _finish(self) -> None:
        if self._started:  # always queued: at most one a segment, and the file must be closed
            self._submit(self._finish_file, self._received_at)
        self._started = self._overflow = False

    def _drop(self) -> None:
        """Records before the first header or segment start cannot begin a file that decodes."""
        self._count("no_start")
        if not self._drop_logged:
            log.warning("camera %s: archive drops records until a stream header and a segment start arrive",
                        self.camera)
            self._drop_logged = True

    def _submit(self, job: Callable[..., None], *args: object) -> None:
        self._jobs.put((job, args))

    def _count(self, reason: ArchiveDropReason) -> None:
        with self._lock:
            self._dropped[reason] += 1

    # -- disk thread side -------------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, args = item
            try:
                job(*args)
            except Exception:  # one bad job must not end the camera's archive
                log.exception("camera %s: unexpected error in the archive", self.camera)

    def _start(self, segment: SegmentStart, opening: list[Record], received_at: float) -> None:
        self._now = max(self._now, received_at)
        start = datetime.fromtimestamp(received_at, timezone.utc)
        file = self._file = _OpenFile(self.directory / archive_name(start, segment.index), start, segment,
                                      segment.first_frame)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self._free_space_above_floor():
                file.skipped = "disk_low"
                self._count("disk_low")
                return
            handle = open(file.partial, "wb")  # noqa: SIM115 (open for the whole segment)
            file.output = _Output(handle, StreamWriter(handle))
            for record in opening:
                file.output.writer.write(record)
        except OSError as exc:
            self._fail(file, exc)

    def _free_space_above_floor(self) -> bool:
        """Measure the free space (at most every FREE_CHECK_SECONDS) against min_free_bytes; one log
        line when recording stops for it and one when it resumes."""
        if self._free_checked_at is not None and self._now - self._free_checked_at < FREE_CHECK_SECONDS:
            return not self._paused
        self._free_checked_at = self._now
        free = shutil.disk_usage(self.directory).free
        paused = free < self.min_free_bytes
        if paused != self._paused:
            if paused:
                log.error("camera %s: archive paused: %d bytes free on its disk, below min_free_bytes (%d); "
                          "recording resumes when space is back", self.camera, free, self.min_free_bytes)
            else:
                log.info("camera %s: archive resumed: %d bytes free on its disk", self.camera, free)
            with self._lock:
                self._paused = paused
        return not paused

    def _append(self, record: FrameRecord, received_at: float) -> None:
        self._now = max(self._now, received_at)
        file = self._file
        assert file is not None, "queued only while a segment is started: after its _start, before its _finish_file"
        if file.skipped is not None:
            self._count(file.skipped)
        elif file.output is not None:
            data = pack_record(record)
            if file.output.writer.bytes_written + len(data) + _END_BYTES > self.max_file_bytes:
                log.warning("camera %s: archive file %s reached max_file_bytes (%d); the rest of segment %d is not "
                            "archived", self.camera, file.path.name, self.max_file_bytes, file.segment.index)
                self._end(file, file.output)
                file.skipped = "file_cap"
                self._count("file_cap")
            else:
                try:
                    file.output.writer.write_packed(data)
                except OSError as exc:
                    self._fail(file, exc)
                file.next_frame = record.index + 1

    def _end(self, file: _OpenFile, output: _Output) -> None:
        """End the file with its end record, sync it and give it its final name."""
        try:
            output.writer.write(StreamEnd(file.next_frame, file.segment.index + 1))
            output.handle.flush()
            os.fsync(output.handle.fileno())
            output.handle.close()
            file.partial.rename(file.path)
        except OSError as exc:
            self._fail(file, exc)
            return
        file.output = None
        if self._files is not None:
            bisect.insort(self._files, (ArchiveFile(file.path, file.start, file.segment.index),
                                        output.writer.bytes_written), key=lambda item: (item[0].start, item[0].segment))

    def _finish_file(self, received_at: float) -> None:
        """The segment is over: end its file unless that happened already (or there is none)."""
        self._now = max(self._now, received_at)
        file, self._file = self._file, None
        if file is None:
            return
        if file.output is not None:
            self._end(file, file.output)
        self._retain()  # also while paused: retention by age is what frees the space

    def _fail(self, file: _OpenFile, exc: OSError) -> None:
        """Give up on the file: log and count once, and remove what was written."""
        with self._lock:
            self._write_errors += 1
        log.error("camera %s: cannot archive %s: %s", self.camera, file.path.name, exc.strerror or exc)
        if file.output is not None:
            with suppress(OSError):
                file.output.handle.close()
            file.output = None
        with suppress(OSError):
            file.partial.unlink(missing_ok=True)

    def _retain(self) -> None:
        """Delete files past the age limit, then the oldest until the total fits `max_bytes`.

        Runs between files, so the file being written is never among them. The folder is read
        once (`.partial` files a crash left behind count and age like the others, so they do
        not pile up); after that the writer keeps its own list rather than listing a folder of
        many thousands of files at every segment.
        """
        if self._files is None:
            try:
                self._files = [(f, f.path.stat().st_size)
                               for f in list_archive(self.root, self.camera, include_partial=True)]
            except OSError as exc:
                with self._lock:
                    self._write_errors += 1
                log.error("camera %s: cannot list the archive for retention: %s", self.camera, exc.strerror or exc)
                return
        cutoff = self._now - self.max_age_seconds
        total = sum(size for _, size in self._files)
        reasons: list[DeleteReason] = []
        while len(reasons) < len(self._files) and (
                self._files[len(reasons)][0].start.timestamp() < cutoff or total > self.max_bytes):
            file, size = self._files[len(reasons)]
            reasons.append("age" if file.start.timestamp() < cutoff else "size")
            total -= size
        deleted = freed = 0
        for (file, size), reason in zip(self._files, reasons):
            try:
                file.path.unlink(missing_ok=True)
            except OSError as exc:
                with self._lock:
                    self._write_errors += 1
                log.error("camera %s: retention cannot delete %s: %s", self.camera, file.path.name,
                          exc.strerror or exc)
                break
            deleted += 1
            freed += size
            with self._lock:
                self._deleted[reason] += 1
        if deleted:
            log.info("camera %s: retention deleted %d archive files (%d bytes) from %s to %s", self.camera, deleted,
                     freed, self._files[0][0].path.name, self._files[deleted - 1][0].path.name)
            del self._files[:deleted]
        with self._lock:
            self._stored_bytes = sum(size for _, size in self._files)
