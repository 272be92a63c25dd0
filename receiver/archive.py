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
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameRecord,
    Record,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    StreamWriter,
)
from shared.codec.framecodec import MAX_BACKGROUNDS

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
PARTIAL_SUFFIX = ".partial"
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
class _OpenFile:
    """The file of the segment being received."""

    path: Path
    """Its final name; it is written under this name plus `.partial`."""
    start: datetime
    segment: SegmentStart
    next_frame: int
    """The index after the last frame written: the end record's frame count."""
    handle: BinaryIO | None = None
    writer: StreamWriter | None = None
    failed: bool = False
    """A disk error happened: the rest of the segment is not written."""

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

    A disk error never raises: the live path must go on when a disk is full. It is logged once
    per file and counted in `write_errors`, and the rest of that segment is not archived.
    """

    def __init__(self, root: Path, camera: str, max_age_seconds: float, max_bytes: int,
                 snapshot_for: Callable[[int], bytes | None]) -> None:
        self.root = Path(root)
        self.camera = camera
        self.directory = camera_directory(self.root, camera)
        self.max_age_seconds = max_age_seconds
        self.max_bytes = max_bytes
        self.snapshot_for = snapshot_for
        self.write_errors = 0
        """Disk errors: files that could not be written, and retention batches that failed."""
        self.deleted: Counter[str] = Counter()
        """Files deleted by retention, by the limit that took them: age, size."""
        self._header: StreamHeader | None = None
        """The stream header last received; every file starts with it."""
        self._backgrounds: dict[int, BackgroundRecord] = {}
        """The stream's latest background pictures by index: a file carries the one its segment
        names."""
        self._file: _OpenFile | None = None
        self._now = 0.0
        """The latest receive time: retention measures ages from it."""
        self._drop_logged = False
        self._files: list[tuple[ArchiveFile, int]] | None = None
        """The archive's files and sizes, oldest first (read from the folder at the first
        retention, then kept up to date); the file being written is not in it."""

    def write(self, record: Record, received_at: float) -> None:
        """Archive one received record; `received_at` is its arrival time (Unix seconds)."""
        self._now = max(self._now, received_at)
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
            else:
                self._start(record, received_at)
        elif isinstance(record, FrameRecord):
            if self._file is None:
                self._drop()
            elif not self._file.failed:
                self._append(record)
                self._file.next_frame = record.index + 1
        elif isinstance(record, StreamEnd):
            self._finish()
        # AdapterRecord: the snapshot at the start of each file stands for it (see the class).

    def close(self) -> None:
        """Complete the file being written (the stream ended or the session closed)."""
        self._finish()

    def _drop(self) -> None:
        """Records before the first header or segment start cannot begin a file that decodes."""
        if not self._drop_logged:
            log.warning("camera %s: archive drops records until a stream header and a segment start arrive",
                        self.camera)
            self._drop_logged = True

    def _start(self, segment: SegmentStart, received_at: float) -> None:
        start = datetime.fromtimestamp(received_at, timezone.utc)
        self._file = _OpenFile(self.directory / archive_name(start, segment.index), start, segment,
                               segment.first_frame)
        self._drop_logged = False
        snapshot = self.snapshot_for(segment.adapter_version) if segment.adapter_version else None
        background = self._backgrounds.get(segment.background)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file.handle = open(self._file.partial, "wb")  # noqa: SIM115 (open for the whole segment)
            self._file.writer = StreamWriter(self._file.handle)
            self._file.writer.write(self._header)
            if snapshot is not None:
                self._file.writer.write(AdapterRecord(snapshot))
            if background is not None:  # missing: the live view could not show the segment either
                self._file.writer.write(background)
            self._file.writer.write(segment)
        except OSError as exc:
            self._fail(exc)

    def _append(self, record: Record) -> None:
        try:
            self._file.writer.write(record)
        except OSError as exc:
            self._fail(exc)

    def _finish(self) -> None:
        """End the open file with its end record, sync it and give it its final name."""
        if self._file is None:
            return
        file = self._file
        if not file.failed:
            self._append(StreamEnd(file.next_frame, file.segment.index + 1))
        if not file.failed:
            try:
                file.handle.flush()
                os.fsync(file.handle.fileno())
                file.handle.close()
                file.partial.rename(file.path)
            except OSError as exc:
                self._fail(exc)
        self._file = None
        if not file.failed and self._files is not None:
            bisect.insort(self._files, (ArchiveFile(file.path, file.start, file.segment.index),
                                        file.writer.bytes_written), key=lambda item: (item[0].start, item[0].segment))
        self._retain()

    def _fail(self, exc: OSError) -> None:
        """Give up on the open file: log and count once, and remove what was written."""
        file = self._file
        file.failed = True
        self.write_errors += 1
        log.error("camera %s: cannot archive %s: %s", self.camera, file.path.name, exc.strerror or exc)
        if file.handle is not None:
            with suppress(OSError):
                file.handle.close()
        with suppress(OSError):
            file.partial.unlink(missing_ok=True)

    @property
    def stored_bytes(self) -> int | None:
        """Bytes of the camera's finished files (None until retention first read the folder)."""
        return None if self._files is None else sum(size for _, size in self._files)

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
                self.write_errors += 1
                log.error("camera %s: cannot list the archive for retention: %s", self.camera, exc.strerror or exc)
                return
        cutoff = self._now - self.max_age_seconds
        total = sum(size for _, size in self._files)
        reasons: list[str] = []
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
                self.write_errors += 1
                log.error("camera %s: retention cannot delete %s: %s", self.camera, file.path.name,
                          exc.strerror or exc)
                break
            deleted += 1
            freed += size
            self.deleted[reason] += 1
        if deleted:
            log.info("camera %s: retention deleted %d archive files (%d bytes) from %s to %s", self.camera, deleted,
                     freed, self._files[0][0].path.name, self._files[deleted - 1][0].path.name)
            del self._files[:deleted]
