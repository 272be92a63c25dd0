"""What rebuilds a camera's decoder in a new worker process, so that a worker's death costs its
innocent cameras latency, not frames.

A camera's decoder state in a worker follows from the records it was given: the stream header,
the adapter updates since (the adapter store), the background pictures it holds, and the current
segment's start and frames (the reference picture). Feeding the same records, in that order, to a
fresh decoder gives the same state, since decoding is exact. The history holds those records as
the pool sent them (packed), bounded in bytes; past the bound it stops being complete until the
next stream header, and the camera then falls back to asking its sender for a fresh start.
"""

from __future__ import annotations

from adaptcast.shared.codec.bitstream import RecordType
from adaptcast.shared.codec.framecodec import MAX_BACKGROUNDS

HISTORY_BYTES = 16 << 20
"""A camera's history beyond which it is not kept (one large keyframe and its segment fit)."""


class DecoderHistory:
    """The packed records that bring a fresh decoder to where a camera's decoder is."""

    def __init__(self, budget: int = HISTORY_BYTES) -> None:
        self.budget = budget
        self._header: bytes | None = None
        self._adapters: list[bytes] = []
        self._backgrounds: list[bytes] = []
        """The newest MAX_BACKGROUNDS, as the decoder keeps them."""
        self._segment: list[bytes] = []
        """The current segment's start, then its frames (and the end record)."""
        self._complete = False
        """False before a header and once the records outgrew the budget, until the next header."""

    def add(self, packed: bytes) -> None:
        """Note a record the camera's worker has decoded (whatever it made of it)."""
        kind = packed[0]
        if kind == RecordType.STREAM_HEADER:
            self._header, self._adapters, self._backgrounds, self._segment = packed, [], [], []
            self._complete = True
        elif not self._complete:
            return
        elif kind == RecordType.ADAPTER:
            self._adapters.append(packed)
        elif kind == RecordType.BACKGROUND:
            self._backgrounds = [*self._backgrounds, packed][-MAX_BACKGROUNDS:]
        elif kind == RecordType.SEGMENT:
            self._segment = [packed]
        elif self._segment:  # a frame or the end record of the current segment
            self._segment.append(packed)
        if sum(map(len, self._records())) > self.budget:
            self._adapters, self._backgrounds, self._segment = [], [], []
            self._complete = False

    def replay(self) -> list[bytes]:
        """The records to feed a new worker, in order: everything when complete, else the header
        alone (the camera then resumes at its next segment it can decode), else nothing."""
        if self._complete:
            return self._records()
        return [self._header] if self._header is not None else []

    def forget_since_header(self) -> None:
        """Keep the header alone: for a camera blamed for a worker's death, whose other records
        are not to be trusted to a worker again."""
        self._adapters, self._backgrounds, self._segment = [], [], []
        self._complete = False

    def _records(self) -> list[bytes]:
        return [self._header, *self._adapters, *self._backgrounds, *self._segment] if self._header else []
