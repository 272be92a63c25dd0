"""`adaptcast decode`: an .acs stream into a video file."""

from __future__ import annotations

import argparse

from adaptcast.commands import Command
from adaptcast.commands.arguments import add_device, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="stream file (.acs)")
    parser.add_argument("-o", "--output", help="video to write (.mp4, .mkv or .y4m)")
    parser.add_argument("--reference", help="original video: report the mean RGB PSNR against it")
    parser.add_argument("--adapters", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-adapters decodes every segment with the base model (the fallback path)")
    parser.add_argument("--model", help="a model file or compressai:ssf2020:Q to search besides the bundled "
                                        "models (the stream names its model by SHA-256)")
    add_device(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures")


def run(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.modelfile import ModelLibrary
    from adaptcast.shared.device import pick_device
    from adaptcast.shared.pipeline.stream import decode_file

    models = ModelLibrary([args.model] if args.model else [])
    report = decode_file(args.input, args.output, models, pick_device(args.device), reference=args.reference,
                         use_adapters=args.adapters)
    if args.json:
        print_json(report)
    else:
        quality = f", {report.psnr:.2f} dB" if report.psnr is not None else ""
        print(f"{report.frames} frames{quality}, {report.frames / report.decode_seconds:.1f} fps")
    return 0


COMMAND = Command("decode", "decode an .acs stream into a video file", add_arguments, run)
