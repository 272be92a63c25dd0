"""Exporting a camera's archive to one video (`adaptcast export`).

The archive's files are fed, in time order, to one StreamDecoder, record by record as the live
receiver fed them, so the export shows exactly the frames the live view showed: the same
adapter versions, the same fallbacks. What differs from the live feed is only what the
archive added to make every file decode alone, and that is undone here: the repeated stream
header, the adapter snapshot of a version already held and the background picture already held
are skipped, and each file's own end record is checked rather than ending the decoder's stream.

An archived file holds what a camera sent, and CompressAI's rANS decoder does not bound-check its
input (CompressAI issue #300): a poisoned file that crashes or hangs torch or CompressAI must cost
that file, not the export. So the decoding runs in a child process, as the live receiver's decode
workers do (receiver/childproc.py: spawned, our own framing, no pickle, dies with its parent).
This process reads each file's stream header (to see that the stream did not change), owns the
video and the report, and sends the child one file at a time: its path and how to start it (a
fresh decoder, a resync, or on from the file before). The child keeps the StreamDecoder from
file to file and answers with the file's frames (raw RGB) and its outcome. A child that dies, or
says nothing for the hang timeout, is killed; its file is reported damaged, the frames it gave
stay in the video, and a new child takes the next file with a fresh decoder, which every archive
file allows (it starts with the stream header, an adapter snapshot and the backgrounds it needs).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adaptcast.receiver.archive import ArchiveFile, camera_directory, list_archive
from adaptcast.receiver.childproc import (
    SPAWN,
    enter_child,
    exit_description,
    limit_address_space,
    message,
    read_message,
    write_message,
)
from adaptcast.receiver.workers import HANG_TIMEOUT_SECONDS, START_TIMEOUT_SECONDS, STOP_GRACE_SECONDS, WorkerStartError
from adaptcast.shared.adapters.store import AdapterStore
from adaptcast.shared.adapters.update import AdapterRejected, decode_update
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameRecord,
    Record,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    read_records,
)
from adaptcast.shared.codec.modelfile import LoadedModel, ModelLibrary
from adaptcast.shared.config import WORKER_MEMORY_MB
from adaptcast.shared.device import usable_cores
from adaptcast.shared.errors import AdaptcastError, BitstreamError, ModelError, PathError
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.outputs import written_whole
from adaptcast.shared.pipeline.streamdecoder import StreamDecoder
from adaptcast.shared.video import VideoWriter, check_video_output

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
        raise ValueError(f"time must be ISO 8601, like 2024-05-01T08:30:00Z or 2024-05-01 08:30, "
                         f"got {text!r}") from None
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


ProgressCallback = Callable[[str, int], None]
"""Called as each file goes to the decoder, with the file's name and the decoding child's pid."""
_Start = Literal["new", "resync", "continue"]
"""How the child starts a file: with a fresh decoder (the first file, a new child, or the sender
restarted its stream), after a resync (segments missing or damaged before it), or on from the file before."""


def export_archive(
    root: Path,
    camera: str,
    output: Path,
    models: Sequence[str | Path],
    device: torch.device,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    on_file: ProgressCallback | None = None,
    hang_timeout: float = HANG_TIMEOUT_SECONDS,
    memory_limit_bytes: int | None = WORKER_MEMORY_MB << 20,
) -> ExportReport:
    """Decode the camera's archive files that started in [start, end) into one video.

    `models` are model names or files to search besides the bundled ones; the child process loads
    the one the archive names. A corrupt file is logged, reported and skipped from the damage on;
    a file that crashes the decoder, or on which it sends nothing for `hang_timeout` seconds, is
    reported likewise and a new decoder takes the next file. The export goes on with the next file.
    A file whose stream header differs from the first one's (the camera's size or model changed)
    ends the export with an error naming it; the frames before it are kept. Any other failure leaves
    no output (shared/outputs.py). On the CPU the child's address space may grow by
    `memory_limit_bytes` beyond what it holds with the model loaded, as a decode worker's (None: no
    limit).
    """
    if not root.is_dir():
        raise PathError(f"archive folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    check_video_output(output)
    low = _utc(start) if start else None
    high = _utc(end) if end else None
    files = [f for f in list_archive(root, camera)
             if (low is None or f.start >= low) and (high is None or f.start < high)]
    if not files:
        span = f" from {low.isoformat() if low else 'the start'} to {high.isoformat() if high else 'the end'}"
        raise BitstreamError(f"camera {camera} has no archived segments{span} in {camera_directory(root, camera)}")
    report = ExportReport(frames=0, files=len(files), fallback_segments=0, first=files[0].start, last=files[-1].start)
    header: StreamHeader | None = None
    """The first readable file's: every later file must have the same."""
    child: _Child | None = None
    video: VideoWriter | None = None
    previous: ArchiveFile | None = None
    resync = False
    """The file before was damaged or unreadable: the decoder gives up on its segment."""
    with written_whole(output, keep_on=(BitstreamError,)) as partial:
        try:
            for file in files:
                try:
                    file_header = _read_header(file.path)
                except (OSError, BitstreamError) as exc:
                    _corrupt(report, camera, file, str(exc))
                    previous, resync = file, True
                    continue
                if header is not None and file_header != header:
                    raise BitstreamError(
                        f"camera {camera}: the stream changed at {file.path.name} ({_describe(header)} before, "
                        f"{_describe(file_header)} from there): {output} holds the {report.frames} frames before it; "
                        f"export from {file.start.isoformat()} on for the rest"
                    )
                how: _Start = "continue"
                if child is None:  # the first file, or the child before it died: a new one has no decoder yet
                    try:
                        child = _Child.start(models, device, file_header, hang_timeout, memory_limit_bytes)
                    except ModelError as exc:
                        raise ModelError(f"{file.path.name}: {exc} (--model)") from None
                    how = "new"
                elif previous is not None and file.segment <= previous.segment:
                    how = "new"  # the sender restarted its stream: a new decoder, as the live receiver had for the
                    # new session (adapter versions count from 1 again)
                elif previous is not None and file.segment != previous.segment + 1:
                    log.warning("camera %s: segments %d to %d are missing from the archive before %s", camera,
                                previous.segment + 1, file.segment - 1, file.path.name)
                    how = "resync"
                elif resync:
                    how = "resync"
                if video is None:  # the first readable file
                    header = file_header
                    video = VideoWriter(partial, header.fps, FrameSize(header.width, header.height))
                if on_file is not None:
                    on_file(file.path.name, child.pid)
                outcome = child.decode(file.path, how, video, file_header)
                report.frames += outcome.frames
                report.fallback_segments += outcome.fallback_segments
                if outcome.error is not None:
                    _corrupt(report, camera, file, outcome.error)
                if outcome.lost:
                    child = None
                resync, previous = outcome.error is not None, file
        finally:
            if child is not None:
                child.close()
            if video is not None:
                video.close()
        if header is None:
            raise BitstreamError(f"none of the {len(files)} archived files of camera {camera} in the range could "
                                 "be read")
    return report


def _read_header(path: Path) -> StreamHeader:
    """A file's stream header, read here: the child reads the rest."""
    with open(path, "rb") as file:
        header = next(read_records(file), None)
    if not isinstance(header, StreamHeader):
        raise BitstreamError("it does not start with a stream header")
    return header


def _describe(header: StreamHeader) -> str:
    return f"{header.width}x{header.height} at {header.fps:g} fps, model {header.model_name}"


def _corrupt(report: ExportReport, camera: str, file: ArchiveFile, why: str) -> None:
    """Skip the rest of a damaged file, as the live receiver skips the rest of a damaged segment."""
    log.warning("camera %s: archive file %s is damaged or unreadable, the rest of it is skipped: %s",
                camera, file.path.name, why)
    report.corrupt.append(file.path.name)


@dataclass
class _Outcome:
    """What became of one file sent to the child."""

    frames: int
    """Frames written to the video."""
    fallback_segments: int
    """Segments of the file decoded with the base model."""
    error: str | None
    """Why the rest of the file was skipped; None if it decoded to its end record."""
    lost: bool = False
    """The child died or hung on it and was killed."""


class _ChildLost(Exception):
    """The child died, hung or answered out of our framing; it is gone (killed if need be)."""


class _Child:
    """The export's decoding child process, and this process's end of its socket."""

    def __init__(self, process: BaseProcess, sock: socket.socket) -> None:
        self.process = process
        self.pid = process.pid or 0
        self.sock = sock
        self.stream = sock.makefile("rwb")

    @classmethod
    def start(cls, models: Sequence[str | Path], device: torch.device, header: StreamHeader, hang_timeout: float,
              memory_limit_bytes: int | None) -> _Child:
        """Start a child and wait until it has loaded the model `header` names (ModelError if
        none of `models` or the bundled ones is it; WorkerStartError if it cannot start)."""
        ours, theirs = socket.socketpair()
        process = SPAWN.Process(
            target=_child_main, name="adaptcast-export-decode", daemon=True,
            args=(theirs, [str(model) for model in models], str(device), header.model_sha256, header.model_name,
                  usable_cores(), logging.getLogger().level, memory_limit_bytes),
        )
        try:
            process.start()
        except OSError as exc:
            ours.close()
            raise WorkerStartError(f"the export's decoder could not start: {exc}") from None
        finally:
            theirs.close()  # the child's copy alone must hold it, so that its death closes the socket
        child = cls(process, ours)
        ours.settimeout(START_TIMEOUT_SECONDS)
        try:
            head, _ = child._reply("while loading the model")
        except _ChildLost as exc:
            raise WorkerStartError(f"the export's decoder could not start: {exc}") from None
        if head.get("error") is not None:
            child.close()
            raise ModelError(str(head["error"]))
        ours.settimeout(hang_timeout)
        return child

    def decode(self, path: Path, how: _Start, video: VideoWriter, header: StreamHeader) -> _Outcome:
        """Have the child decode one file, writing its frames to `video` as they come."""
        frames = 0
        try:
            self._send(message({"path": str(path), "start": how}))
            while True:
                head, body = self._reply("on it")
                if "shape" not in head:
                    return _Outcome(frames, int(head["fallback_segments"]),
                                    None if head["error"] is None else str(head["error"]))
                video.write(_frame(head, body, header))
                frames += 1
        except _ChildLost as exc:
            why = str(exc)
        except (KeyError, ValueError, TypeError) as exc:  # out of our protocol: a child gone wrong
            why = self._kill(f"the decoder answered out of turn ({exc!r})")
        return _Outcome(frames, 0, f"{why}; a new decoder takes the files after it", lost=True)

    def _send(self, parts: list[bytes | memoryview]) -> None:
        try:
            write_message(self.stream, parts)
        except OSError:  # its end of the socket is closed: it died
            raise _ChildLost(self._kill("the decoder crashed on it")) from None

    def _reply(self, when: str) -> tuple[dict[str, Any], bytes]:
        """The child's next message; _ChildLost (the child then killed and reaped) if it died,
        said nothing within the socket's timeout, or broke the framing."""
        try:
            reply = read_message(self.stream)
        except TimeoutError:
            why = f"the decoder hung {when}: no word from it in {self.sock.gettimeout():g} s"
            raise _ChildLost(self._kill(why)) from None
        except OSError:
            reply = None
        except (ValueError, TypeError) as exc:
            raise _ChildLost(self._kill(f"the decoder broke the framing ({exc})")) from None
        if reply is None:
            raise _ChildLost(self._kill(f"the decoder crashed {when}"))
        return reply

    def _kill(self, why: str) -> str:
        """Kill and reap the child; `why` and how it ended, in words."""
        self.process.kill()
        self.process.join()
        exitcode = self.process.exitcode
        self._release()
        self.process.close()
        return exit_description(f"{why} (pid {self.pid})", exitcode)

    def close(self) -> None:
        """Close the socket (the child reads its end and exits) and reap it; kill it if it lingers."""
        self._release()
        self.process.join(STOP_GRACE_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process.close()

    def _release(self) -> None:
        """Close this end of the socket: both the file and the socket hold it open. The file's
        close flushes what it holds, which fails once the child is dead; it closes all the same."""
        with contextlib.suppress(OSError):
            self.stream.close()
        self.sock.close()


def _frame(head: dict[str, Any], body: bytes, header: StreamHeader) -> np.ndarray:
    """A frame from the child, which must be of the stream's size."""
    height, width = (int(n) for n in head["shape"])
    if (height, width) != (header.height, header.width) or len(body) != height * width * 3:
        raise ValueError(f"a frame of {width}x{height} in {len(body)} bytes")
    return np.frombuffer(body, np.uint8).reshape(height, width, 3)


# The child's side.


def _child_main(sock: socket.socket, models: list[str], device_name: str, model_sha256: str, model_name: str,
                threads: int, log_level: int, memory_limit_bytes: int | None) -> None:
    """The decoding child: load the model the archive names, then decode the files it is sent, one
    at a time, until the export closes the socket (it therefore never outlives the export)."""
    enter_child(log_level, threads)
    stream = sock.makefile("rwb")
    try:
        device = torch.device(device_name)
        try:
            loaded = ModelLibrary(models).find(model_sha256, model_name)
            loaded.model.to(device)
            limit_address_space(device, memory_limit_bytes)
        except AdaptcastError as exc:
            write_message(stream, message({"error": str(exc)}))
            return
        write_message(stream, message({"model": loaded.info.name}))
        files = _FileDecoder(loaded, device, stream)
        while (request := read_message(stream)) is not None:
            head, _ = request
            write_message(stream, message(files.decode(Path(head["path"]), head["start"])))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the export is gone


class _FileDecoder:
    """The child's StreamDecoder, kept from file to file as the live receiver kept it from segment
    to segment (adapter store, backgrounds), and the socket its frames go out on."""

    def __init__(self, loaded: LoadedModel, device: torch.device, stream: io.BufferedIOBase) -> None:
        self.loaded = loaded
        self.device = device
        self.stream = stream
        self.decoder: StreamDecoder | None = None

    def decode(self, path: Path, how: _Start) -> dict[str, Any]:
        """Decode one file, sending its frames as they come; its outcome, as the last message's head."""
        before = 0
        try:
            with open(path, "rb") as file:
                records = read_records(file)
                header = next(records, None)
                if not isinstance(header, StreamHeader):
                    raise BitstreamError("it does not start with a stream header")
                if self.decoder is None or how == "new":
                    if header.model_sha256 != self.loaded.info.sha256:
                        raise BitstreamError(f"it names model {header.model_name!r:.80}, not the export's")
                    self.decoder = StreamDecoder(header, self.loaded, self.device)
                elif how == "resync":
                    self.decoder.resync()
                before = self.decoder.fallback_segments
                _decode_file(records, self.decoder, self._send)
        except (OSError, BitstreamError) as exc:
            return self._outcome(str(exc), before)
        except Exception as exc:  # torch or CompressAI failed on bad input, or ran out of address space
            outcome = self._outcome(f"internal error: {exc!r:.200}", before)
            self.decoder = None  # in an unknown state: the next file starts a fresh one
            return outcome
        return self._outcome(None, before)

    def _outcome(self, error: str | None, fallbacks_before: int) -> dict[str, Any]:
        fallbacks = self.decoder.fallback_segments - fallbacks_before if self.decoder is not None else 0
        return {"error": error, "fallback_segments": fallbacks}

    def _send(self, rgb: np.ndarray) -> None:
        frame = np.ascontiguousarray(rgb)
        write_message(self.stream, message({"shape": list(frame.shape[:2])}, frame.reshape(-1).data))


def _decode_file(records: Iterator[Record], decoder: StreamDecoder, show: Callable[[np.ndarray], None]) -> None:
    """Feed one file's records after its header, handing each frame to `show`; raise
    BitstreamError where the file is damaged."""
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
            show(rgb)
    raise BitstreamError("it is truncated: no end record")


def _held(record: AdapterRecord, store: AdapterStore) -> bool:
    """Whether the file's adapter snapshot is a version the decoder holds already (from the file
    before); a snapshot that cannot be read goes to the store, which rejects and counts it."""
    try:
        return decode_update(record.update).version in store.held_versions()
    except AdapterRejected:
        return False
