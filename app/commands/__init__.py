"""The `adaptcast` subcommands: one module per command or small group, each giving the registry
(adaptcast.cli) a `Command`. A command module parses and calls the library; it imports torch and
the rest of the library inside `run`, so that listing the commands stays fast."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

ENTRY_POINT_GROUP = "adaptcast.commands"
"""Other distributions (adaptcast-bench) add commands through entry points of this group, each named
as its command and pointing at a `Command`."""


@dataclass(frozen=True)
class Command:
    """One subcommand of `adaptcast`."""

    name: str
    """What a user types: `adaptcast NAME ...`."""
    help: str
    """One line for the command list."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the command's own arguments to its subparser."""
    run: Callable[[argparse.Namespace], int]
    """Does the work and returns the exit code; an AdaptcastError it raises becomes one line and code 2."""
