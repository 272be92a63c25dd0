"""Doing less per frame when the machine cannot keep up, in a fixed order.

A sender on a box whose cores are taken by something else must still show most frames on time:
dropping whole segments as stale (the transport's last resort) shows almost nothing. So the
encoder sheds work one rung at a time, as long as frames leave it late:

    0  everything: adapter fitting, latent refinement, every frame coded
    1  no new adapter fits (the adapter in force goes on, then the base model)
    2  no latent refinement (of frames, and of backgrounds)
    3+ only every (level - 1)-th frame is coded; the others are sent as skipped frames, which
       cost no computation and keep the timeline whole

and climbs back down one rung at a time once frames leave it early again for a while.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LEVEL = 5
"""At most every 4th frame coded."""
RAISE_LAG_SECONDS = 0.4
"""A smoothed lag (capture to record handed out) above this sheds one more rung..."""
RAISE_AFTER_SECONDS = 1.0
"""...at most this often, so that one rung's effect shows before the next."""
LOWER_LAG_SECONDS = 0.15
"""Below this, one rung is given back..."""
LOWER_AFTER_SECONDS = 5.0
"""...after this long without a change, so that the load does not swing back at once."""
SMOOTHING = 0.2


@dataclass
class LoadShedder:
    level: int = 0
    lag_seconds: float = 0.0
    """Smoothed seconds from capture to the record being handed out."""
    changes: int = 0
    _changed_at: float | None = None

    def observe(self, lag: float, now: float) -> int | None:
        """Take one frame's lag; return the new level when it changed, else None."""
        self.lag_seconds += SMOOTHING * (lag - self.lag_seconds)
        if self._changed_at is None:
            self._changed_at = now
        since = now - self._changed_at
        if self.lag_seconds > RAISE_LAG_SECONDS and since >= RAISE_AFTER_SECONDS and self.level < MAX_LEVEL:
            self.level += 1
        elif self.lag_seconds < LOWER_LAG_SECONDS and since >= LOWER_AFTER_SECONDS and self.level > 0:
            self.level -= 1
        else:
            return None
        self._changed_at = now
        self.changes += 1
        return self.level

    @property
    def fits_allowed(self) -> bool:
        return self.level < 1

    @property
    def refinement(self) -> bool:
        return self.level < 2

    @property
    def frame_stride(self) -> int:
        """Code one frame in this many; the others are skipped."""
        return 1 if self.level < 3 else self.level - 1
