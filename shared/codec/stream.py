"""Whole-stream coding: video file to .acs file and back (`adaptcast encode` / `decode`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.codec.bitstream import (
    FrameRecord,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    StreamWriter,
    read_records,
)
from shared.codec.framecodec import FrameDecoder, FrameEncoder
from shared.codec.modelfile import LoadedModel
from shared.errors import BitstreamError, ModelError, VideoError
from shared.video import FrameSize, VideoWriter, psnr, read_frames


@dataclass
class EncodeReport:
    frames: int
    width: int
    height: int
    segments: int
    latent_bytes: int
    adapter_bytes: int
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


def encode_file(
    source: str | Path,
    output: str | Path,
    loaded: LoadedModel,
    size: FrameSize,
    fps: float,
    segment_frames: int,
    max_frames: int | None,
    device: torch.device,
) -> EncodeReport:
    """Encode a video into an .acs file; every segment starts with an I-frame."""
    if segment_frames < 1:
        raise ValueError(f"segment frames must be at least 1, got {segment_frames}")
    encoder = FrameEncoder(loaded.model, size, device)
    header = StreamHeader(loaded.info.sha256, loaded.info.name, size.width, size.height, fps, segment_frames)
    latent_bytes = frames = segments = 0
    psnrs: list[float] = []
    started = time.perf_counter()
    with open(output, "wb") as file, tqdm(desc="encode", unit="frame", total=max_frames, file=sys.stderr) as bar:
        writer = StreamWriter(file)
        writer.write(header)
        for rgb in read_frames(source, size, fps, max_frames):
            keyframe = frames % segment_frames == 0
            if keyframe:
                writer.write(SegmentStart(segments, frames, segment_frames))
                segments += 1
            record, reconstruction = encoder.encode(rgb, frames, keyframe)
            writer.write(record)
            latent_bytes += len(record.string)
            psnrs.append(psnr(rgb, reconstruction))
            frames += 1
            bar.update()
        writer.write(StreamEnd(frames, segments))
        total_bytes = writer.bytes_written
    if frames == 0:
        Path(output).unlink(missing_ok=True)
        raise VideoError(f"{source} gave no frames")
    return EncodeReport(
        frames=frames, width=size.width, height=size.height, segments=segments,
        latent_bytes=latent_bytes, adapter_bytes=0, total_bytes=total_bytes,
        bpp=total_bytes * 8 / (frames * size.width * size.height), psnr=float(np.mean(psnrs)),
        encode_seconds=time.perf_counter() - started, fit_seconds=0.0, model=loaded.info.name,
    )


def decode_file(
    source: str | Path,
    output: str | Path | None,
    loaded: LoadedModel,
    device: torch.device,
    reference: str | Path | None = None,
) -> DecodeReport:
    """Decode an .acs file to a video; with `reference`, measure PSNR against it.

    Frames decoded before an error are kept in the output: a damaged file loses only what is
    damaged. The error is raised after the output is closed.
    """
    try:
        file = open(source, "rb")
    except OSError as exc:
        raise BitstreamError(f"cannot open {source}: {exc.strerror}") from None
    records = read_records(file)
    header = next(records, None)
    if not isinstance(header, StreamHeader):
        raise BitstreamError(f"{source}: the stream does not start with a stream header")
    if header.model_sha256 != loaded.info.sha256:
        raise ModelError(
            f"{source} was coded with model {header.model_name} (sha256 {header.model_sha256[:16]}), "
            f"not {loaded.info.name} (sha256 {loaded.info.sha256[:16]}); pass that model with --model"
        )
    size = FrameSize(header.width, header.height)
    decoder = FrameDecoder(loaded.model, size, device)
    reference_frames = read_frames(reference, size, header.fps) if reference else None
    writer = VideoWriter(output, header.fps, size) if output else None
    psnrs: list[float] = []
    frames = segments = 0
    ended = False
    started = time.perf_counter()
    try:
        with file, tqdm(desc="decode", unit="frame", file=sys.stderr) as bar:
            for record in records:
                if ended:
                    raise BitstreamError("records after the end of the stream")
                if isinstance(record, SegmentStart):
                    if record.index != segments or record.first_frame != frames:
                        raise BitstreamError(f"segment {record.index} is out of order")
                    segments += 1
                elif isinstance(record, FrameRecord):
                    if record.index != frames:
                        raise BitstreamError(f"frame {record.index} arrived where frame {frames} was due")
                    rgb = decoder.decode(record)
                    if writer:
                        writer.write(rgb)
                    if reference_frames is not None:
                        original = next(reference_frames, None)
                        if original is None:
                            raise VideoError(f"reference {reference} has fewer frames than the stream")
                        psnrs.append(psnr(original, rgb))
                    frames += 1
                    bar.update()
                elif isinstance(record, StreamEnd):
                    if (record.frames, record.segments) != (frames, segments):
                        raise BitstreamError(f"end record counts {record.frames} frames, {frames} were decoded")
                    ended = True
                else:
                    raise BitstreamError("a second stream header inside the stream")
    except BitstreamError as exc:
        raise BitstreamError(f"{exc} (the {frames} frames before it were decoded and kept)") from None
    finally:
        if writer:
            writer.close()
    if not ended:
        raise BitstreamError(f"{source} is truncated: it ends after {frames} frames without an end record")
    return DecodeReport(
        frames=frames, decode_seconds=time.perf_counter() - started, fallback_segments=0,
        psnr=float(np.mean(psnrs)) if psnrs else None,
    )
