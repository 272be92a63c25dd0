"""Exporting a camera's archive to one video (`adaptcast export`).

The archive's files are fed, in time order, to one StreamDecoder, record by record as the live
receiver fed them, so the export shows exactly the frames the live view showed: the same
adapter versions, the same fallbacks. What differs from the live feed is only what the
archive added to make every file decode alone, and that is undone here: the repeated stream
header, the adapter snapshot of a version already held and the background picture already held
are skipped, and each file's own end record is checked rather than ending the decoder's stream.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from receiver.archive import ArchiveFile, camera_directory, list_archive
from shared.adapters.store import AdapterStore
from shared.adapters.update import AdapterRejected, decode_update
from shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameRecord,
    Record,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    read_records,
)
from shared.codec.modelfile import ModelLibrary
from shared.codec.streamdecoder import StreamDecoder
from shared.errors import BitstreamError, ModelError
from shared.video import VideoWriter

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    frames: int
    """Frames written to the video."""
    files: int
    """Archive files in the time range, corrupt ones included."""
    fallback_segments: int
    """Segments decoded with the base model because their adapter version was unusable."""
    first: datetime
    """Start time (UTC) of the first file in the range."""
    last: datetime
    """Start time (UTC) of the last file in the range."""
    corrupt: list[str] = field(default_factory=list)
    """Names of the files that were unreadable or damaged; their frames before the damage are in
    the video, as the live view showed them."""


def parse_time(text: str) -> datetime:
    """An ISO 8601 time from the command line, in UTC; a time without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"time must be ISO 8601, like 2024-05-01T08:30:00Z or 2024-05-01 08:30, got {text!r}") from None
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def export_archive(
    root: Path,
    camera: str,
    output: Path,
    models: ModelLibrary,
    device: torch.device,
    start: datetime | None = None,
    end: datetime | None = None,
) -> ExportReport:
    """Decode the camera's archive files that started in [start, end) into one video.

    A corrupt file is logged, reported and skipped from the damage on; the export goes on with
    the next file. A file whose stream header differs from the first one's (the camera's size
    or model changed) ends the export with an error naming it; the frames before it are kept.
    """
    low = _utc(start) if start else None
    high = _utc(end) if end else None
    files = [f for f in list_archive(root, camera)
             if (low is None or f.start >= low) and (high is None or f.start < high)]
    if not files:
        span = f" from {low.isoformat() if low else 'the start'} to {high.isoformat() if high else 'the end'}"
        raise BitstreamError(f"camera {camera} has no archived segments{span} in {camera_directory(root, camera)}")
    report = ExportReport(frames=0, files=len(files), fallback_segments=0, first=files[0].start, last=files[-1].start)
    decoder: StreamDecoder | None = None
    video: VideoWriter | None = None
    previous: ArchiveFile | None = None
    try:
        for file in files:
            try:
                records = read_records(io.BytesIO(file.path.read_bytes()))
                header = next(records, None)
                if not isinstance(header, StreamHeader):
                    raise BitstreamError("it does not start with a stream header")
            except (OSError, BitstreamError) as exc:
                _corrupt(report, camera, file, exc, decoder)
                previous = file
                continue
            if decoder is not None and header != decoder.header:
                raise BitstreamError(
                    f"camera {camera}: the stream changed at {file.path.name} ({_describe(decoder.header)} before, "
                    f"{_describe(header)} from there): {output} holds the {report.frames} frames before it; "
                    f"export from {file.start.isoformat()} on for the rest"
                )
            if decoder is None or (previous is not None and file.segment <= previous.segment):
                # The first file, or the sender restarted its stream: a new decoder, as the live
                # receiver had for the new session (adapter versions count from 1 again).
                if decoder is not None:
                    report.fallback_segments += decoder.fallback_segments
                try:
                    decoder = StreamDecoder(header, models.find(header.model_sha256, header.model_name), device)
                except ModelError as exc:
                    raise ModelError(f"{file.path.name}: {exc} (--model)") from None
            elif previous is not None and file.segment != previous.segment + 1:
                log.warning("camera %s: segments %d to %d are missing from the archive before %s", camera,
                            previous.segment + 1, file.segment - 1, file.path.name)
                decoder.resync()
            if video is None:
                video = VideoWriter(output, header.fps, decoder.size)
            try:
                _decode_file(records, decoder, video, report)
            except BitstreamError as exc:
                _corrupt(report, camera, file, exc, decoder)
            previous = file
    finally:
        if video is not None:
            video.close()
    if decoder is None:
        raise BitstreamError(f"none of the {len(files)} archived files of camera {camera} in the range could be read")
    report.fallback_segments += decoder.fallback_segments
    return report


def _describe(header: StreamHeader) -> str:
    return f"{header.width}x{header.height} at {header.fps:g} fps, model {header.model_name}"


def _corrupt(report: ExportReport, camera: str, file: ArchiveFile, exc: Exception, decoder: StreamDecoder | None) -> None:
    """Skip the rest of a damaged file, as the live receiver skips the rest of a damaged segment."""
    log.warning("camera %s: archive file %s is damaged or unreadable, the rest of it is skipped: %s",
                camera, file.path.name, exc)
    report.corrupt.append(file.path.name)
    if decoder is not None:
        decoder.resync()


def _decode_file(records: Iterator[Record], decoder: StreamDecoder, video: VideoWriter, report: ExportReport) -> None:
    """Feed one file's records after its header; raise BitstreamError where it is damaged."""
    segment: SegmentStart | None = None
    next_frame = 0
    for record in records:
        if isinstance(record, StreamEnd):
            if segment is None or (record.frames, record.segments) != (next_frame, segment.index + 1):
                raise BitstreamError(f"its end record counts {record.frames} frames and {record.segments} segments, "
                                     "which is not what it holds")
            if next(records, None) is not None:
                raise BitstreamError("records follow its end record")
            return
        if isinstance(record, AdapterRecord) and _held(record, decoder.store):
            continue
        if isinstance(record, BackgroundRecord) and record.index in decoder.decoder.backgrounds:
            continue
        if isinstance(record, SegmentStart):
            segment, next_frame = record, record.first_frame
        elif isinstance(record, FrameRecord):
            next_frame = record.index + 1
        rgb = decoder.feed(record)
        if rgb is not None:
            video.write(rgb)
            report.frames += 1
    raise BitstreamError("it is truncated: no end record")


def _held(record: AdapterRecord, store: AdapterStore) -> bool:
    """Whether the file's adapter snapshot is a version the decoder holds already (from the file
    before); a snapshot that cannot be read goes to the store, which rejects and counts it."""
    try:
        return decode_update(record.update).version in store.held_versions()
    except AdapterRejected:
        return False
