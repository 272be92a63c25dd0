"""Whole-stream coding: video file to .acs file and back (`adaptcast encode` / `decode`)."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adaptcast.shared.adapters.fitting import FitBudget, StreamAdapter
from adaptcast.shared.adapters.lora import AdapterSpec
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.background import BackgroundKeeper, background_coding
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameKind,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    StreamWriter,
    read_records,
)
from adaptcast.shared.codec.framecodec import FrameEncoder, LatentRefinement, SkipDecision
from adaptcast.shared.codec.modelfile import LoadedModel, ModelLibrary
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.errors import BitstreamError, ModelError, VideoError
from adaptcast.shared.frames import FrameSize, psnr, to_tensor
from adaptcast.shared.outputs import check_writable, written_whole
from adaptcast.shared.pipeline.streamdecoder import StreamDecoder
from adaptcast.shared.video import VideoWriter, check_video_output, read_frames


@dataclass
class EncodeReport:
    frames: int
    width: int
    height: int
    segments: int
    latent_bytes: int
    adapter_bytes: int
    adapter_updates_declined: int
    """Fits whose update would have cost more than it was estimated to save (not sent)."""
    background_bytes: int
    backgrounds: int
    skipped_frames: int
    total_bytes: int
    bpp: float
    psnr: float
    encode_seconds: float
    fit_seconds: float
    model: str


@dataclass
class DecodeReport:
    frames: int
    decode_seconds: float
    fallback_segments: int
    psnr: float | None = None


@dataclass(frozen=True)
class AdaptOptions:
    """How `encode_file` adapts the decoder to each segment."""

    mode: AdaptMode = AdaptMode.SEGMENT
    """SEGMENT: fit on segment k and code k with it (best quality, a segment of latency);
    LIVE: code segment k with the adapter fitted on k-1 (no added latency)."""
    budget: FitBudget = FitBudget()
    spec: AdapterSpec = AdapterSpec()
    snapshot_every: int = 10


def _segments(frames: Iterator[np.ndarray], length: int) -> Iterator[list[np.ndarray]]:
    segment: list[np.ndarray] = []
    for frame in frames:
        segment.append(frame)
        if len(segment) == length:
            yield segment
            segment = []
    if segment:
        yield segment


def encode_file(
    source: str | Path,
    output: str | Path,
    loaded: LoadedModel,
    device: torch.device,
    *,
    size: FrameSize,
    fps: float,
    segment_frames: int,
    max_frames: int | None = None,
    adapt: AdaptOptions | None = None,
    refine_steps: int = 0,
    tools: CodingTools = CodingTools.none(),
    reconstruction: str | Path | None = None,
    progress: bool = True,
    quality: float | None = None,
) -> EncodeReport:
    """Encode a video into an .acs file, read at `size` and `fps` (at most `max_frames` of it),
    in segments of `segment_frames`; every segment starts with an I-frame, or with the
    `tools`, from the camera's background picture. As a live sender does (sender/encoder.py), a
    background is coded at one segment's start and sent before the next one, the first that
    uses it, so the first segment starts with an I-frame.

    With `adapt`, an adapter update precedes the segment that first uses it, and every
    segment record names the adapter version its frames were coded with. `refine_steps`
    refines each frame's latent at the encoder (`LatentRefinement`). `reconstruction` names a
    video to write the encoder's reconstruction to, which is what a decoder must show (a .y4m
    is exact). `progress` shows a progress bar on stderr. `quality` is the index a variable-rate
    model codes at (default: the middle of its range).

    The outputs are checked before any work and written whole or not at all (shared/outputs.py).
    """
    if segment_frames < 1:
        raise ValueError(f"segment frames must be at least 1, got {segment_frames}")
    check_writable(output)
    if reconstruction:
        check_video_output(reconstruction)
    info = loaded.info
    quality = info.coding_quality(quality)
    # every tool below that weighs bits against distortion asks for the model's lambda: a model
    # without one is refused here, before any work
    encoder = FrameEncoder(loaded.model, size, device)
    encoder.quality = quality
    if refine_steps:
        encoder.refinement = LatentRefinement(info.required_lambda(quality), refine_steps)
    if tools.skip:
        encoder.skip = SkipDecision(info.required_lambda(quality))
    keeper = BackgroundKeeper(tools.background, fps) if tools.background else None
    if tools.background:
        background_quality, background_lambda = background_coding(loaded.info, quality, tools.background)
        if tools.background.refine_steps:
            encoder.background_refinement = LatentRefinement(background_lambda, tools.background.refine_steps)
    stream = Path(source).stem[:64] or "camera"
    adapter = (
        StreamAdapter(stream, encoder.model, info.sha256, adapt.spec, info.required_lambda(quality), adapt.budget,
                      snapshot_every=adapt.snapshot_every, quality=quality)
        if adapt else None
    )
    mode = adapt.mode if adapt else None
    header = StreamHeader(loaded.info.sha256, loaded.info.name, size.width, size.height, fps, segment_frames, stream)
    latent_bytes = adapter_bytes = background_bytes = backgrounds = skipped = frames = segments = declined = 0
    coded_last_segment: int | None = None
    """Frames of the last segment that were coded (not skipped): what a new adapter would serve."""
    pending: BackgroundRecord | None = None
    """A background coded at a segment's start: sent and used from the next segment on."""
    in_force = 0
    """The background segments start from (0: none yet, an I-frame)."""
    fit_seconds = 0.0
    psnrs: list[float] = []
    previous: list[np.ndarray] = []
    started = time.perf_counter()

    def fit(adapter: StreamAdapter, writer: StreamWriter, segment: list[np.ndarray]) -> None:
        nonlocal adapter_bytes, fit_seconds, declined
        served = (coded_last_segment or len(segment)) if tools.adapter_gate else None
        update, result = adapter.fit([to_tensor(rgb, encoder.padded, device) for rgb in segment], served)
        if update is None:
            declined += 1
        else:
            adapter_bytes += writer.write(AdapterRecord(update))
        fit_seconds += result.seconds

    with written_whole(output) as partial, open(partial, "wb") as file, \
            tqdm(desc="encode", unit="frame", total=max_frames, file=sys.stderr, disable=not progress) as bar, \
            ExitStack() as closing:
        recon_writer = (closing.enter_context(VideoWriter(closing.enter_context(written_whole(reconstruction)), fps,
                                                          size))
                        if reconstruction else None)
        writer = StreamWriter(file)
        writer.write(header)
        for segment in _segments(read_frames(source, size, fps, max_frames), segment_frames):
            if adapter and mode == AdaptMode.SEGMENT:
                fit(adapter, writer, segment)
            elif adapter and previous:
                fit(adapter, writer, previous)
            version = adapter.version if adapter else 0
            if keeper:
                keeper.observe(segment[0])
                if pending:  # coded at the last segment's start, as a live sender codes it meanwhile
                    background_bytes += writer.write(pending)
                    backgrounds += 1
                    in_force, pending = pending.index, None
                encoder.quality = background_quality  # a background's own quality, then the frames' again
                pending = keeper.code_if_due(encoder)
                encoder.quality = quality
                if in_force:
                    encoder.start_from_background(in_force)
            writer.write(SegmentStart(segments, frames, len(segment), version, in_force, quality))
            encoder.weights = adapter.weights if adapter else None
            coded_last_segment = 0
            for position, rgb in enumerate(segment):
                if keeper and position:
                    keeper.observe(rgb)
                record, decoded = encoder.encode(rgb, frames, keyframe=position == 0 and not in_force)
                writer.write(record)
                if recon_writer:
                    recon_writer.write(decoded)
                latent_bytes += len(record.string)
                skipped += record.kind == FrameKind.SKIP
                coded_last_segment += record.kind != FrameKind.SKIP
                psnrs.append(psnr(rgb, decoded))
                frames += 1
                bar.update()
            segments += 1
            previous = segment
        if frames == 0:
            raise VideoError(f"{source} gave no frames")
        writer.write(StreamEnd(frames, segments))
        total_bytes = writer.bytes_written
    return EncodeReport(
        frames=frames, width=size.width, height=size.height, segments=segments,
        latent_bytes=latent_bytes, adapter_bytes=adapter_bytes, adapter_updates_declined=declined,
        background_bytes=background_bytes,
        backgrounds=backgrounds, skipped_frames=skipped, total_bytes=total_bytes,
        bpp=total_bytes * 8 / (frames * size.width * size.height), psnr=float(np.mean(psnrs)),
        encode_seconds=time.perf_counter() - started, fit_seconds=fit_seconds, model=loaded.info.name,
    )


def _opened(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """`frames` from `read_frames` with its source opened now, not at the first frame asked for:
    a missing or unreadable video fails before anything is written."""
    first = next(frames, None)
    return iter(()) if first is None else itertools.chain([first], frames)


def decode_file(
    source: str | Path,
    output: str | Path | None,
    models: ModelLibrary,
    device: torch.device,
    *,
    reference: str | Path | None = None,
    use_adapters: bool = True,
    progress: bool = True,
) -> DecodeReport:
    """Decode an .acs file to a video, with the model it names from `models`; with `reference`,
    measure PSNR against it.

    Each segment decodes with the adapter version it names, or with the base model when that
    version is unusable (counted in `fallback_segments`); `use_adapters=False` decodes every
    segment with the base model, which is what a fallback costs.

    Frames decoded before damage in the stream are kept in the output: a damaged file loses only
    what is damaged. The BitstreamError is raised after the output is closed. Any other failure
    leaves no output: the output is checked before any work and written under a temporary name
    (shared/outputs.py), and the reference is opened before the first frame is written.
    """
    if output:
        check_video_output(output)
    try:
        file = open(source, "rb")
    except OSError as exc:
        raise BitstreamError(f"cannot open {source}: {exc.strerror}") from None
    records = read_records(file)
    header = next(records, None)
    if not isinstance(header, StreamHeader):
        raise BitstreamError(f"{source}: the stream does not start with a stream header")
    try:
        stream = StreamDecoder(header, models.find(header.model_sha256, header.model_name), device, use_adapters)
    except ModelError as exc:
        raise ModelError(f"{source}: {exc} (--model)") from None
    reference_frames = _opened(read_frames(reference, stream.size, header.fps)) if reference else None
    psnrs: list[float] = []
    started = time.perf_counter()
    kept: AbstractContextManager[Path | None] = (written_whole(output, keep_on=(BitstreamError,)) if output
                                                 else nullcontext())
    with file, kept as partial:
        writer = VideoWriter(partial, header.fps, stream.size) if partial else None
        try:
            with tqdm(desc="decode", unit="frame", file=sys.stderr, disable=not progress) as bar:
                for record in records:
                    rgb = stream.feed(record)
                    if rgb is None:
                        continue
                    if writer:
                        writer.write(rgb)
                    if reference_frames is not None:
                        original = next(reference_frames, None)
                        if original is None:
                            raise VideoError(f"reference {reference} has fewer frames than the stream")
                        psnrs.append(psnr(original, rgb))
                    bar.update()
        except BitstreamError as exc:
            raise BitstreamError(f"{exc} (the {stream.frames} frames before it were decoded and kept)") from None
        finally:
            if writer:
                writer.close()
        if not stream.ended:
            raise BitstreamError(f"{source} is truncated: it ends after {stream.frames} frames without an end record")
    return DecodeReport(
        frames=stream.frames, decode_seconds=time.perf_counter() - started, fallback_segments=stream.fallback_segments,
        psnr=float(np.mean(psnrs)) if psnrs else None,
    )
