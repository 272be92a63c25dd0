"""Frames as numpy arrays and as model tensors, and the conversions between them.

Apart from the video files (`shared.video`) so that coding and training run where PyAV is not
installed: a GPU training machine reads frames from a pack, not from videos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

MIN_CODED_SIDE = 32
"""The smallest side of a frame that is coded (a camera's `size`, `--size`). The codec pads frames to
a multiple of 16 (the scale-space volume halves them four times), so a side under 32 pixels is
mostly padding: a typing mistake, not a camera."""


def coded_size_problem(width: int, height: int) -> str | None:
    """Why frames of `width` x `height` cannot be coded, or None: the rule, stated once."""
    if width % 2 or height % 2 or min(width, height) < MIN_CODED_SIDE:
        return f"both sides must be at least {MIN_CODED_SIDE} pixels and even (4:2:0 video), got {width}x{height}"
    return None


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


def padded_size(size: FrameSize, multiple: int) -> FrameSize:
    """The smallest size at least `size` whose sides are multiples of `multiple`."""
    return FrameSize(
        math.ceil(size.width / multiple) * multiple, math.ceil(size.height / multiple) * multiple
    )


RgbFrame: TypeAlias = npt.NDArray[np.uint8]
"""A picture as PyAV gives it and the codec takes it: H x W x 3, uint8 RGB."""


def to_tensor(rgb: RgbFrame, padded: FrameSize, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 H x W x 3 to a 1 x 3 x H' x W' float tensor in [0, 1], edge-padded to `padded`."""
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    pad_w, pad_h = padded.width - rgb.shape[1], padded.height - rgb.shape[0]
    if pad_w or pad_h:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def to_rgb(x: torch.Tensor, size: FrameSize) -> RgbFrame:
    """A 1 x 3 x H' x W' tensor back to uint8 H x W x 3, cropped to `size`."""
    x = x[0, :, : size.height, : size.width].clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def psnr(a: RgbFrame, b: RgbFrame) -> float:
    """RGB PSNR in dB of two uint8 frames (capped at 100 dB for identical frames)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))
