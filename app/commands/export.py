"""`adaptcast export`: a camera's archive, or a time range of it, decoded to one video."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

from adaptcast.commands import Command
from adaptcast.commands.arguments import add_device, positive_int

log = logging.getLogger("adaptcast.export")


def _time(text: str) -> datetime:
    from adaptcast.receiver.export import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _camera(text: str) -> str:
    from adaptcast.receiver.archive import camera_directory

    try:
        camera_directory(Path("."), text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", required=True, help="the receiver's archive folder")
    parser.add_argument("--camera", required=True, type=_camera)
    parser.add_argument("--start", type=_time, help="ISO 8601 time (UTC unless it says otherwise)")
    parser.add_argument("--end", type=_time, help="ISO 8601 time (UTC unless it says otherwise)")
    parser.add_argument("-o", "--output", required=True, help="video to write (.mp4, .mkv or .y4m)")
    parser.add_argument("--model", help="a model file to search besides the bundled models (the archive names "
                                        "its model by SHA-256)")
    add_device(parser)
    parser.add_argument("--memory-mb", type=positive_int,
                        help="address space the decoding child process may take on the CPU beyond what it holds "
                             "with the model loaded, in MiB (default: the receiver's default worker_memory_mb)")


def run(args: argparse.Namespace) -> int:
    from adaptcast.receiver.export import export_archive
    from adaptcast.shared.config import WORKER_MEMORY_MB
    from adaptcast.shared.device import pick_device

    def progress(name: str, pid: int) -> None:
        log.info("camera %s: decoding %s (decoder pid %d)", args.camera, name, pid)

    report = export_archive(Path(args.archive), args.camera, Path(args.output), [args.model] if args.model else [],
                            pick_device(args.device), start=args.start, end=args.end, on_file=progress,
                            memory_limit_bytes=(args.memory_mb or WORKER_MEMORY_MB) << 20)
    print(f"{report.frames} frames from {report.files} files ({report.first} to {report.last}), "
          f"{report.fallback_segments} segments decoded with the base model")
    for name in report.corrupt:
        print(f"damaged file skipped: {name}", file=sys.stderr)
    return 0


COMMAND = Command("export", "decode a camera's archive (or a time range of it) to a video file", add_arguments, run)
