"""Token buckets by key (a camera, a remote address), for the WHIP endpoint's offer rate.

Every offer costs the receiver a peer connection (a certificate, ICE gathering, an answer), so
each camera and each remote address may make `burst` offers at once and `rate` a second after.
The buckets of at most `max_keys` keys are kept: past that the least recently used is forgotten
(it starts again full), so a peer with many addresses cannot grow the table without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_KEYS = 4096


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """key -> (tokens, when they were counted); in order of last use."""

    def take(self, key: str) -> float:
        """Take one offer's token for `key`: 0.0 when there was one, else the seconds until there is."""
        now = self._clock()
        tokens, counted = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted) * self.rate)
        granted = tokens >= 1.0
        self._buckets[key] = (tokens - granted, now)  # re-inserted: now the most recently used
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return 0.0 if granted else (1.0 - tokens) / self.rate
