"""The adaptation mode: which segment's adapter codes a segment, and so what adapting costs in
latency. One definition for the configuration, the command line, the sender and `encode_file`.
"""

from __future__ import annotations

from enum import Enum


class AdaptMode(str, Enum):
    """A str, so that it compares equal to its name in a file or on a command line and
    serialises as it (json); `AdaptMode(text)` is the one check of a name, and the error a bad
    one gets. Its `str` is the name, on every Python version (3.12 formats a str mix-in as
    `AdaptMode.LIVE` otherwise); YAML needs `.value`."""

    LIVE = "live"
    """Code segment k at once, with the adapter fitted on an earlier segment: no added latency."""
    SEGMENT = "segment"
    """Fit on segment k, then code k with that adapter: the best quality, a segment of latency."""

    def __str__(self) -> str:
        return self.value
