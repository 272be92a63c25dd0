"""`adaptcast sender`: the sender daemon."""

from __future__ import annotations

import argparse

from adaptcast.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="sender YAML file (deploy/config/sender.example.yaml)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from adaptcast.sender.daemon import run_sender
    from adaptcast.shared.config import load_sender_config

    asyncio.run(run_sender(load_sender_config(args.config)))
    return 0


COMMAND = Command("sender", "run the sender daemon: capture, fit, encode and stream every camera", add_arguments, run)
