"""How many latent-refinement steps each frame can afford, from the encoder's measured speed.

Refinement (a few gradient steps on a frame's latent before it is coded: `LatentRefinement`)
buys bits for nothing at the receiver, but every step costs about a decoder pass forward and
back. A live sender has one frame period per frame, shared with fitting; so it spends at most
a set share of it, and sets the steps from what coding a frame and one step have been measured
to take on this machine: none on a small CPU, several on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMOOTHING = 0.2
MIN_STEP_SECONDS = 1e-4
"""A step never costs less than this: a frame coded with refinement can come out faster than the
smoothed cost without it (the first frames are slow), which must not read as a free step."""
REMEASURE_EVERY = 50
"""Every this many frames one is coded without refinement, so that the base cost stays current."""


@dataclass
class RefinementBudget:
    frame_seconds: float
    """Seconds the encoder may spend on one frame, refinement included."""
    max_steps: int = 10
    base_seconds: float | None = None
    """Smoothed seconds to code a P-frame without refinement."""
    step_seconds: float | None = None
    """Smoothed seconds of one refinement step."""
    _frames: int = 0

    def steps(self) -> int:
        """Steps for the next P-frame."""
        self._frames += 1
        if self.base_seconds is None or self._frames % REMEASURE_EVERY == 0:
            return 0
        if self.step_seconds is None:  # one step, to measure what a step costs
            return 1 if self.base_seconds < self.frame_seconds else 0
        spare = self.frame_seconds - self.base_seconds
        return max(0, min(self.max_steps, math.floor(spare / max(self.step_seconds, MIN_STEP_SECONDS))))

    def observe(self, steps: int, seconds: float) -> None:
        """Take the time a P-frame coded with `steps` refinement steps took."""
        if steps == 0:
            self.base_seconds = _smooth(self.base_seconds, seconds)
        elif self.base_seconds is not None:
            self.step_seconds = _smooth(self.step_seconds, max(0.0, seconds - self.base_seconds) / steps)


def _smooth(previous: float | None, value: float) -> float:
    return value if previous is None else previous + SMOOTHING * (value - previous)
