"""`adaptcast demo`: a receiver and a sender on loopback streaming one camera (adaptcast.demo)."""

from __future__ import annotations

import argparse

from adaptcast.commands import Command
from adaptcast.commands.arguments import positive_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="camera: a video file, rtsp:// URL, /dev/videoN or testpattern "
                                         "(default: the bundled clip, looped)")
    parser.add_argument("--duration", type=positive_float,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--archive", help="keep the received stream in this folder (camera name demo)")
    parser.add_argument("--port", type=int, default=8080, help="receiver port (a free one is taken if it is busy)")


def run(args: argparse.Namespace) -> int:
    from adaptcast.demo import run_demo

    return run_demo(args.source, args.duration, args.archive, args.port)


COMMAND = Command("demo", "a receiver and a sender on loopback streaming one camera; prints the URLs", add_arguments,
                  run)
