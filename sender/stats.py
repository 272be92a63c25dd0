"""What the sender's components report to its metrics: frozen snapshots, taken at scrape time.

Each component (capture, encoder, rate control, connection, camera) returns its own from a
`stats()` method; sender/metrics.py reads these types and nothing else of the sender, as
MediaMTX's internal/metrics reads the data types of internal/defs: the components keep their
state to themselves, and the metrics import no daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adaptcast.shared.metrics import Histogram


@dataclass(frozen=True)
class CaptureStats:
    live: bool
    """The camera source delivers frames."""
    reconnects: int
    """Times the source was reopened after a failure or stall."""
    dropped: Mapping[str, int]
    """Frames lost before the encoder, by reason."""


@dataclass(frozen=True)
class RateStats:
    """A variable-rate model's rate control."""

    target_bps: float | None
    """The configured target bitrate (None: no target)."""
    last_bps: float | None
    """The last complete segment's bitrate, everything sent counted."""
    link_ceiling_bps: float | None
    """What the link was measured to carry while it was the bottleneck (None: it keeps up)."""


@dataclass(frozen=True)
class EncoderStats:
    segment_outcomes: Mapping[str, int]
    """Segments coded, by the adapter they used: adapted, reused, base."""
    fit_events: Mapping[str, int]
    """Degradations of fitting, by event (CameraEncoder.counts)."""
    fit_duration: Histogram
    fit_steps: int
    fit_realtime_factor: float | None
    bits_per_pixel: float | None
    keyframe_psnr: Mapping[str, float]
    """PSNR (dB) of the last I-frame, by the model that decodes it: base, adapted."""
    frame_kinds: Mapping[str, int]
    backgrounds_coded: int
    background_bytes: int
    background_psnr: float | None
    refine_steps: int
    load_level: int
    """The rung of work shed under load (0: none)."""
    coding_version: int
    """The adapter version the current segment is coded with (0: base)."""
    quality: float
    rate: RateStats | None
    """None for a single-rate model."""


@dataclass(frozen=True)
class LinkStats:
    """The connection in use."""

    queued_bytes: int
    """Bytes waiting to be sent: the sender's queue and the data channel's buffer."""
    channel_state: str
    """The data channel's readyState: connecting, open, closing, closed."""
    rtt_seconds: float | None
    """The last heartbeat's round trip (None before the first answer)."""


@dataclass(frozen=True)
class CameraStats:
    camera: str
    frames_captured: int
    """Frames captured and handed to the encoder."""
    dropped: Mapping[str, int]
    """Frames or records lost at the sender, by reason: before the encoder, and on every connection."""
    sent_bytes: Mapping[str, int]
    """Bytes handed to the data channel, framing included, by kind, over every connection."""
    payload_bytes: Mapping[str, int]
    """Bytes of the records themselves, by kind, over every connection."""
    connections: int
    capture: CaptureStats | None
    """None until capture starts (at the first connection)."""
    encoder: EncoderStats
    link: LinkStats | None
    """None while the camera has no connection."""
