"""Video input and output through PyAV."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from adaptcast.shared.errors import VideoError
from adaptcast.shared.frames import FrameSize, coded_size_problem
from adaptcast.shared.outputs import check_writable

VIDEO_SUFFIXES = (".mp4", ".mkv", ".y4m")
"""The containers VideoWriter writes, picked by the output's suffix."""


def read_frames(
    source: str | Path,
    size: FrameSize | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    open_options: dict | None = None,
) -> Iterator[np.ndarray]:
    """Yield RGB frames (H x W x 3, uint8) from any file, URL or device PyAV reads.

    Frames are resized with area averaging (what a camera's scaler does) and, when `fps` is
    given, picked by timestamp so that the output runs at that rate whatever the source's.
    `open_options` go to `av.open` (a camera's transport, timeouts, input format).
    """
    try:
        container = av.open(str(source), **(open_options or {}))
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot open video {source}: {exc}") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{source} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_time = 0.0
        emitted = 0
        try:
            for frame in container.decode(stream):
                if max_frames is not None and emitted >= max_frames:
                    return
                if fps is not None and frame.time is not None:
                    if frame.time + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / fps
                width, height = (size.width, size.height) if size else (frame.width, frame.height)
                rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
                yield rgb.to_ndarray()
                emitted += 1
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode {source}: {exc}") from None


def probe_fps(source: str | Path) -> float:
    """The source's average frame rate, or 25 when the container does not say."""
    try:
        with av.open(str(source)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot open video {source}: {exc}") from None
    return float(rate) if rate else 25.0


def coded_source_size(source: str | Path) -> FrameSize:
    """The source's frame size rounded down to even sides: what it is coded at when no size is
    given. VideoError for a source without frames, or too small to code (the rule: shared/frames.py)."""
    first = next(read_frames(source, max_frames=1), None)
    if first is None:
        raise VideoError(f"{source} has no frames")
    width, height = first.shape[1] // 2 * 2, first.shape[0] // 2 * 2
    if problem := coded_size_problem(width, height):
        raise VideoError(f"{source} cannot be coded at its own size: {problem}")
    return FrameSize(width, height)


def check_video_output(path: str | Path) -> None:
    """Before any work: VideoError when `path` names a container VideoWriter does not write, and
    PathError when it cannot be written there (shared/outputs.py)."""
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoError(f"output must end in {', '.join(VIDEO_SUFFIXES)}, got {Path(path).name}")
    check_writable(path)


class VideoWriter:
    """Writes RGB frames to .mp4 (H.264, near-lossless) or .y4m (raw 4:4:4)."""

    def __init__(self, path: str | Path, fps: float, size: FrameSize) -> None:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise VideoError(f"output must end in {', '.join(VIDEO_SUFFIXES)}, got {path.name}")
        try:
            self._container = av.open(str(path), "w", format="yuv4mpegpipe" if suffix == ".y4m" else None)
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"cannot write {path}: {exc}") from None
        rate = Fraction(fps).limit_denominator(1001)
        if suffix == ".y4m":
            self._stream = self._container.add_stream("rawvideo", rate=rate)
            self._stream.pix_fmt = "yuv444p"
        else:
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "10", "preset": "veryfast"}
        self._stream.width, self._stream.height = size.width, size.height

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
