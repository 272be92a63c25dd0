"""`adaptcast receiver`: the receiver daemon."""

from __future__ import annotations

import argparse

from adaptcast.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="receiver YAML file (deploy/config/receiver.example.yaml)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from adaptcast.receiver.daemon import run_receiver
    from adaptcast.shared.config import load_receiver_config

    asyncio.run(run_receiver(load_receiver_config(args.config)))
    return 0


COMMAND = Command("receiver", "run the receiver daemon: WHIP endpoint, decoding, live view, archive", add_arguments,
                  run)
