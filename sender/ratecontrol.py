"""Rate control: the quality index of each segment, chosen so that a camera's stream follows its
target bitrate (when it has one) and fits the link it is sent over (always).

A variable-rate model codes at any quality index, and a segment's bits grow about exponentially
with the index, at a rate the controller learns from the segments it has seen. After each
segment the controller adds what the segment sent beyond the target to a running debt (what the
stream owes), and aims the next segment at the target less the debt repaid over
REPAY_SECONDS, bounded by the camera's burst maximum and by what the link was measured to carry.
Content changes faster than any model of it, so this is feedback, not prediction: an estimate
that was wrong for one segment is repaid by the next ones.

Below the lowest quality index the controller codes fewer frames: one in 2, 4 or 8, the others
sent as skipped frames (the receiver shows the last picture again), as an IP camera lowers its
frame rate on a poor link. A target below what the lowest index costs is still met, at a lower
frame rate, and a link slower than the stream is not flooded with bursts.

Without a target, a camera codes at its configured quality index until the link cannot carry
the stream: the controller then lowers the quality to what the link carries (rather than let
the transport drop stale segments), and climbs back to the configured index as the link recovers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adaptcast.sender.stats import RateStats

REPAY_SECONDS = 6.0
"""The debt (bits sent beyond the target) is aimed to be repaid over this long."""
LOG_RATE_PER_QUALITY = math.log(1.35)
"""ln(bits ratio) per quality index step: the bundled variable-rate model measured 1.2x to 2.4x
per step on the development clips (docs/models.md); feedback absorbs the difference."""
COMPLEXITY_RELEASE = 0.4
"""Weight of the latest segment in the running estimate of what the scene costs, when it cost
less than estimated; a segment that cost more is taken at once (fast attack, slow release): a
busy scene is paid for from the next segment on, and a quiet spell does not invite the next
burst at a high quality."""
MAX_STEP_DOWN = 0.75
MAX_STEP_UP = 0.25
"""The quality index falls at most this much between two segments, and rises at most that much:
a quiet scene is cheap at any quality, and what it costs at a higher one shows only when
something moves, so the index climbs carefully and drops fast. Below 0 (the skip lambda) it
comes back as fast as it went."""
QUIET_CODED_SHARE = 0.5
"""A segment with fewer of its frames coded than this is a quiet one (see `segment_coded`)."""
MIN_VIRTUAL_QUALITY = -3.0
"""How far below the lowest index the controller goes: each step below 0 halves the frames coded
(at -3, one in 8)."""
LINK_SHARE = 0.8
"""A congested link is aimed at this share of its measured throughput, leaving room for adapters
and for the throughput estimate to be low."""
LINK_PROBE = 1.05
"""Each segment without congestion raises the link's ceiling by this factor: the stream finds its
way back up when the link recovers, without overshooting at once..."""
LINK_MEMORY_SECONDS = 30.0
"""...and the ceiling is forgotten after this long without congestion."""
DEBT_SECONDS = 30.0
"""The debt is held within this many seconds of the target's bits, either way."""
MIN_AIM_SHARE = 0.2
"""A segment is never aimed below this share of the target (a burst is repaid over several segments)."""


@dataclass(frozen=True)
class RateSettings:
    target_bps: float
    max_bps: float
    """The burst ceiling: no segment is aimed above it."""

    def __post_init__(self) -> None:
        if not 0 < self.target_bps <= self.max_bps:
            raise ValueError(f"need 0 < target ({self.target_bps}) <= max ({self.max_bps}) bits per second")


class RateController:
    """One camera's controller: `segment_coded` after each segment, then code the next at `quality`,
    one frame in `frame_stride`."""

    def __init__(self, settings: RateSettings | None, max_quality: float, start_quality: float) -> None:
        """`settings` None follows the link alone, never above `max_quality`; `start_quality`
        codes the first segment."""
        self.settings = settings
        self.max_quality = max_quality
        self._virtual = min(max(start_quality, 0.0), max_quality)
        self._log_complexity: float | None = None
        """ln(bits a second) the scene costs at quality 0 (and beyond, along LOG_RATE_PER_QUALITY):
        a running estimate over the segments coded."""
        self.debt_bits = 0.0
        """Bits sent beyond the target so far (negative: below it)."""
        self.link_ceiling_bps: float | None = None
        """What the link was last measured to carry while it was the bottleneck, raised a little
        with each segment since; None once it has kept up for LINK_MEMORY_SECONDS."""
        self._uncongested_seconds = 0.0
        self.last_bps: float | None = None
        """The last segment's bitrate."""

    def stats(self) -> RateStats:
        return RateStats(target_bps=self.settings.target_bps if self.settings else None, last_bps=self.last_bps,
                         link_ceiling_bps=self.link_ceiling_bps)

    @property
    def quality(self) -> float:
        return max(0.0, self._virtual)

    @property
    def frame_stride(self) -> int:
        """Code one frame in this many: 1 at quality 0 and above, 2, 4, 8 below it."""
        return round(2 ** -min(0.0, self._virtual))

    def aim_bps(self) -> float:
        """The bitrate the next segment is aimed at (infinite: as high as the quality goes)."""
        aim = math.inf
        if self.settings:
            target = self.settings.target_bps
            aim = min(max(target - self.debt_bits / REPAY_SECONDS, MIN_AIM_SHARE * target), self.settings.max_bps)
        if self.link_ceiling_bps is not None:
            aim = min(aim, LINK_SHARE * self.link_ceiling_bps)
        return max(aim, 1.0)

    def segment_coded(self, bits: int, seconds: float, link_bps: float | None = None, one_off_bits: int = 0,
                      coded_share: float = 1.0) -> None:
        """Take a coded segment's bits (everything sent: latents, adapters, backgrounds), of which
        `one_off_bits` (a background picture) say nothing about what the next segment will cost,
        the share of its frames that were coded (not skipped), and the link's throughput if it
        was the bottleneck meanwhile (None if it kept up); choose the next segment's quality.

        A segment of mostly skipped frames raises the index only when the stream is well under
        budget: a still scene looks the same at any quality, and would hand the next burst of
        motion a quality it cannot afford."""
        if seconds <= 0:
            return
        self.last_bps = bits / seconds
        if link_bps:
            self.link_ceiling_bps, self._uncongested_seconds = link_bps, 0.0
        elif self.link_ceiling_bps is not None:
            self.link_ceiling_bps *= LINK_PROBE
            self._uncongested_seconds += seconds
            if self._uncongested_seconds >= LINK_MEMORY_SECONDS:
                self.link_ceiling_bps = None
        recurring = max(bits - one_off_bits, 1) / seconds
        observed = math.log(recurring) - _log_rate_offset(self._virtual)
        if self._log_complexity is None or observed > self._log_complexity:
            self._log_complexity = observed
        else:
            self._log_complexity += COMPLEXITY_RELEASE * (observed - self._log_complexity)
        if self.settings:
            target = self.settings.target_bps
            # at most DEBT_SECONDS of debt or credit: a long stretch that could not be helped (the
            # lowest quality still too rich) must not be paid back with a long stretch of mush
            limit = DEBT_SECONDS * target
            self.debt_bits = min(max(self.debt_bits + bits - target * seconds, -limit), limit)
        aim = self.aim_bps()
        wanted = self.max_quality if math.isinf(aim) else _virtual_for(math.log(aim) - self._log_complexity)
        step = min(max(wanted - self._virtual, -MAX_STEP_DOWN), self._largest_rise(coded_share))
        self._virtual = min(max(self._virtual + step, MIN_VIRTUAL_QUALITY), self.max_quality)

    def _largest_rise(self, coded_share: float) -> float:
        """How far the index may climb for the next segment (see MAX_STEP_UP and `segment_coded`):
        a quiet segment holds it, unless the stream is well under budget, when it may climb as
        a busy one does; a busy segment well under budget, or a stream that is only skipping
        more, climbs as fast as it would fall."""
        if self._virtual < 0:
            return MAX_STEP_DOWN
        under_budget = self.settings is not None and self.debt_bits < -REPAY_SECONDS * self.settings.target_bps
        if coded_share < QUIET_CODED_SHARE:
            return MAX_STEP_UP if under_budget else 0.0
        return MAX_STEP_DOWN if under_budget else MAX_STEP_UP


def _log_rate_offset(virtual: float) -> float:
    """ln(bits) at a virtual quality, against quality 0: LOG_RATE_PER_QUALITY a step above 0, half
    the frames (ln 2) a step below."""
    return virtual * (LOG_RATE_PER_QUALITY if virtual >= 0 else math.log(2))


def _virtual_for(offset: float) -> float:
    """The virtual quality whose `_log_rate_offset` is `offset`."""
    return offset / (LOG_RATE_PER_QUALITY if offset >= 0 else math.log(2))
