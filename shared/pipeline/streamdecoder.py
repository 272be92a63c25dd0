"""Decoding a stream record by record: what `decode_file`, the receiver and `export` share.

A stream is a stream header, then per segment an optional adapter update, an optional background
picture, a segment record and its frames, then an end record. The decoder checks the order, swaps the adapter at each
segment boundary (or falls back to the base model when the segment's version is unusable),
and decodes frames. It starts at whichever segment comes first (an archive file, or a
receiver that joins a stream late, starts in the middle), and the end record's counts are the
indexes after the last frame and segment, which for a whole stream are its totals. A live
receiver can lose records; `resync` drops what is left of the current segment and resumes at
the next one, which starts with an I-frame or from a background picture. A segment that names
a background this decoder does not hold raises MissingBackground and is not decoded: its frames
are not shown rather than shown wrong, and the receiver asks for the background.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from adaptcast.shared.adapters.store import AdapterStore
from adaptcast.shared.adapters.update import AdapterRejected
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameRecord,
    Record,
    SegmentStart,
    StreamEnd,
    StreamHeader,
)
from adaptcast.shared.codec.framecodec import FrameDecoder
from adaptcast.shared.codec.modelfile import LoadedModel
from adaptcast.shared.errors import BitstreamError, ModelError
from adaptcast.shared.frames import FrameSize


class MissingBackground(BitstreamError):
    """A segment starts from a background picture this decoder does not hold (lost, refused, or
    sent before this decoder joined)."""


class StreamDecoder:
    """Feeds on the records of one stream, from its header on."""

    def __init__(self, header: StreamHeader, loaded: LoadedModel, device: torch.device,
                 use_adapters: bool = True) -> None:
        if header.model_sha256 != loaded.info.sha256:
            raise ModelError(
                f"stream {header.stream} was coded with model {header.model_name} (sha256 "
                f"{header.model_sha256[:16]}), not {loaded.info.name} (sha256 {loaded.info.sha256[:16]})"
            )
        self.header = header
        self.max_quality = loaded.info.max_quality
        self.size = FrameSize(header.width, header.height)
        self.decoder = FrameDecoder(loaded.model, self.size, device)
        self.store = AdapterStore(header.stream, self.decoder.model, loaded.info.sha256)
        self.use_adapters = use_adapters
        self.frames = 0
        """Frames decoded."""
        self.segments = 0
        """Segments started."""
        self.fallback_segments = 0
        self.backgrounds = 0
        """Background pictures decoded."""
        self.ended = False
        self.adapter_version = 0
        """The version decoding the current segment (0: the base model)."""
        self.swap_seconds: float | None = None
        """For the latest segment start: the seconds it took to install its adapter's weights when
        it switched to another adapter than the segment before's; None when it kept the adapter,
        decodes with the base model or was refused. A swap computes the weights from the adapter's
        symbols before the segment's first frame can decode, so the receiver measures it."""
        self._next_frame: int | None = None
        """The frame index due next; None while waiting for a segment start (at first, and after
        `resync`)."""

    def resync(self) -> None:
        """Give up on the current segment (a record was lost) and wait for the next one."""
        self._next_frame = None
        self.decoder.reference = None

    def feed(self, record: Record) -> np.ndarray | None:
        """Take one record; return the decoded RGB frame for a frame record, else None.

        Raises BitstreamError for a record that breaks the stream's order or cannot be decoded
        exactly; the decoder's state is then unchanged except that the frame was not decoded.
        """
        if self.ended:
            raise BitstreamError(f"stream {self.header.stream}: records after the end of the stream")
        if isinstance(record, SegmentStart):
            self._start_segment(record)
        elif isinstance(record, AdapterRecord):
            if self.use_adapters:
                try:
                    self.store.receive(record.update)
                except AdapterRejected:
                    pass  # logged and counted by the store; the segments that need it fall back
        elif isinstance(record, FrameRecord):
            return self._decode(record)
        elif isinstance(record, BackgroundRecord):
            if record.quality > self.max_quality:
                raise BitstreamError(f"background {record.index} is coded at quality {record.quality}; the "
                                     f"model's highest is {self.max_quality}")
            self.decoder.decode_background(record)
            self.backgrounds += 1
        elif isinstance(record, StreamEnd):
            if self._next_frame is not None and (record.frames, record.segments) != (self._next_frame, self.segments):
                raise BitstreamError(f"end record counts {record.frames} frames, the stream had {self._next_frame}")
            self.ended = True
        else:
            raise BitstreamError("a second stream header inside the stream")
        return None

    def _start_segment(self, record: SegmentStart) -> None:
        self.swap_seconds = None
        if self._next_frame is None:
            if record.index < self.segments:
                raise BitstreamError(f"segment {record.index} is older than the segments already seen")
        elif record.index != self.segments or record.first_frame != self._next_frame:
            raise BitstreamError(f"segment {record.index} is out of order")
        if record.quality > self.max_quality:
            raise BitstreamError(f"segment {record.index} is coded at quality {record.quality}; the model's "
                                 f"highest is {self.max_quality}")
        if record.background and record.background not in self.decoder.backgrounds:
            self.resync()
            raise MissingBackground(f"segment {record.index} starts from background {record.background}, "
                                    "which this decoder does not hold")
        started = time.perf_counter()
        weights = self.store.weights_for(record.adapter_version) if self.use_adapters else None
        if record.adapter_version != 0 and weights is None:
            self.fallback_segments += 1
        self.decoder.weights = weights
        self.decoder.quality = record.quality
        version = record.adapter_version if weights is not None else 0
        if version not in (0, self.adapter_version):
            self.swap_seconds = time.perf_counter() - started
        self.adapter_version = version
        self.segments = record.index + 1
        self._next_frame = record.first_frame
        if record.background:
            self.decoder.start_from_background(record.background)

    def _decode(self, record: FrameRecord) -> np.ndarray | None:
        if self._next_frame is None:
            return None  # the rest of a segment given up by resync
        if record.index != self._next_frame:
            raise BitstreamError(f"frame {record.index} arrived where frame {self._next_frame} was due")
        rgb = self.decoder.decode(record)
        self._next_frame += 1
        self.frames += 1
        return rgb
