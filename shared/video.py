"""Video input and output through PyAV, and the conversions between frames and tensors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import VideoError


@dataclass(frozen=True)
class FrameSize:
    """A frame size in pixels, always positive."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"frame size must be positive, got {self.width}x{self.height}")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"frame size must be even (4:2:0 video), got {self.width}x{self.height}")

    @classmethod
    def parse(cls, text: str) -> FrameSize:
        """Parse `WxH`, as given on the command line."""
        try:
            width, height = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"size must look like 320x240, got {text!r}") from None
        return cls(width, height)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


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


class VideoWriter:
    """Writes RGB frames to .mp4 (H.264, near-lossless) or .y4m (raw 4:4:4)."""

    def __init__(self, path: str | Path, fps: float, size: FrameSize) -> None:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".mp4", ".y4m", ".mkv"):
            raise VideoError(f"output must end in .mp4, .mkv or .y4m, got {path.name}")
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


def padded_size(size: FrameSize, multiple: int) -> FrameSize:
    """The smallest size at least `size` whose sides are multiples of `multiple`."""
    return FrameSize(
        math.ceil(size.width / multiple) * multiple, math.ceil(size.height / multiple) * multiple
    )


def to_tensor(rgb: np.ndarray, padded: FrameSize, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 H x W x 3 to a 1 x 3 x H' x W' float tensor in [0, 1], edge-padded to `padded`."""
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    pad_w, pad_h = padded.width - rgb.shape[1], padded.height - rgb.shape[0]
    if pad_w or pad_h:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def to_rgb(x: torch.Tensor, size: FrameSize) -> np.ndarray:
    """A 1 x 3 x H' x W' tensor back to uint8 H x W x 3, cropped to `size`."""
    x = x[0, :, : size.height, : size.width].clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """RGB PSNR in dB of two uint8 frames (capped at 100 dB for identical frames)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))
