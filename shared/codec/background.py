"""A fixed camera's background picture: what it is, and when a new one is worth sending.

A surveillance camera mostly sees the same scene. Segments that start by predicting from a
picture of that scene (coded once, at a higher quality than an I-frame could afford) need no
I-frame, which is most of a static camera's bits. The background is the per-pixel temporal median
of frames sampled over the last few seconds, so people and cars passing through drop out of it.
A new one is sent when none was, when the scene has drifted from the one sent (lighting,
day and night, a parked car) by more than a set margin, and at a maximum age.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from adaptcast.shared.codec.bitstream import snap_quality
from adaptcast.shared.frames import RgbFrame, psnr

if TYPE_CHECKING:
    from adaptcast.shared.codec.bitstream import BackgroundRecord
    from adaptcast.shared.codec.framecodec import FrameEncoder
    from adaptcast.shared.codec.modelfile import ModelInfo


@dataclass(frozen=True)
class BackgroundSettings:
    """How a camera's background is estimated, coded and refreshed."""

    window: int = 15
    """Frames in the temporal median."""
    sample_seconds: float = 1.0
    """Seconds between the frames the median takes."""
    refresh_db: float = 1.0
    """Send a new background when the estimate has drifted this far (PSNR, dB) from the one sent,
    compared with how close it was when sent."""
    max_age_seconds: float = 600.0
    """Send a new background at least this often."""
    min_interval_seconds: float = 30.0
    """...and at most this often, whatever the drift: a background coded at a high quality sees
    the median's own noise as drift, and each one costs the bytes and the refinement time of a
    picture."""
    refine_steps: int = 100
    """Latent refinement steps when coding a background (a rare picture can afford them)."""
    lambda_scale: float = 4.0
    """The background is refined towards lambda * lambda_scale: higher quality than a frame."""

    def __post_init__(self) -> None:
        if self.window < 1 or self.sample_seconds <= 0 or self.refresh_db <= 0 or self.max_age_seconds <= 0:
            raise ValueError("background window, sample_seconds, refresh_db and max_age_seconds must be positive")
        if self.refine_steps < 0 or self.lambda_scale <= 0 or self.min_interval_seconds < 0:
            raise ValueError("background refine_steps and min_interval_seconds must be >= 0 and lambda_scale positive")


def background_coding(info: ModelInfo, quality: float, settings: BackgroundSettings) -> tuple[float, float]:
    """The quality index and refinement lambda a background is coded with, for frames coded at
    `quality`: `lambda_scale` times the frames' trade-off, as a rare picture affords. A
    variable-rate model gets there by its quality index (as many rate points up as that ratio
    spans, at most its highest: refinement towards a lambda beyond its rate points would buy
    bits its gains were not trained for); a single-rate model by refinement alone."""
    if not info.variable_rate:
        return quality, info.required_lambda(quality) * settings.lambda_scale
    levels = math.log(settings.lambda_scale) / math.log(info.rate_lambdas[1] / info.rate_lambdas[0])
    raised = snap_quality(min(info.max_quality, quality + levels))
    return raised, info.required_lambda(raised)


class BackgroundKeeper:
    """One camera's background estimate and the bookkeeping of the background last sent.

    Time is counted in frames observed, so offline encoding and a live camera decide alike.
    """

    def __init__(self, settings: BackgroundSettings, fps: float) -> None:
        self.settings = settings
        self.fps = fps
        self._samples: deque[RgbFrame] = deque(maxlen=settings.window)
        self._every = max(1, round(settings.sample_seconds * fps))
        self._observed = 0
        self._sent_at = 0
        """The frame count when the background in force was coded."""
        self._sent: RgbFrame | None = None
        """The background in force as the decoder holds it."""
        self.sent_psnr = 0.0
        """The background in force's PSNR (dB) against the estimate it was coded from."""
        self.index = 0
        """The index of the background in force (0: none yet)."""

    def observe(self, rgb: RgbFrame) -> None:
        """Take a frame of the camera, in capture order."""
        if self._observed % self._every == 0:
            self._samples.append(rgb)
        self._observed += 1

    def estimate(self) -> RgbFrame:
        """The background as the median of the sampled frames."""
        if not self._samples:
            raise ValueError("no frame observed yet")
        samples = list(self._samples)  # one atomic copy: a worker thread may estimate while frames arrive
        if len(samples) == 1:
            return samples[0]
        return np.median(np.stack(samples), axis=0).round().astype(np.uint8)

    def due(self) -> RgbFrame | None:
        """The picture to code as a new background now, or None while the one in force will do."""
        estimate = self.estimate()
        if self._sent is None:
            return estimate
        age = (self._observed - self._sent_at) / self.fps
        if age >= self.settings.max_age_seconds:
            return estimate
        if age < self.settings.min_interval_seconds:
            return None
        if psnr(estimate, self._sent) < self.sent_psnr - self.settings.refresh_db:
            return estimate
        return None

    def code_if_due(self, encoder: FrameEncoder) -> BackgroundRecord | None:
        """Code the estimate with `encoder` as the next background when one is due (the encoder
        keeps the decoded picture under the record's index); None while the one in force will do."""
        picture = self.due()
        if picture is None:
            return None
        record, decoded = encoder.encode_background(picture, self.index + 1)
        self._sent, self._sent_at, self.sent_psnr = decoded, self._observed, psnr(picture, decoded)
        self.index += 1
        return record
